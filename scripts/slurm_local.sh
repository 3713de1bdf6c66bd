#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine, to rehearse `launcher=slurm` sweeps (and to
# test them in CI): munged, a MariaDB on 127.0.0.1, slurmdbd (accounting: submitit needs sacct),
# slurmctld and slurmd, all with their configuration, state and logs under one folder.
#
#   scripts/slurm_local.sh start      # needs root and Debian's packages (`make slurm-deps`)
#   eval "$(scripts/slurm_local.sh env)"   # SLURM_CONF for sbatch/squeue/sacct and mimic-run
#   scripts/slurm_local.sh status
#   scripts/slurm_local.sh stop       # cancels the jobs, stops the daemons it started (by pid)
#
# Folder: $SLURM_LOCAL_DIR (default /tmp/mimic-slurm); `start` wipes it, so job ids restart at 1.
# Ports: $SLURM_LOCAL_PORT (default 16817) and the next three: slurmctld, slurmd, slurmdbd,
# MariaDB — away from a real cluster's 6817-6819 and MariaDB's 3306.
# Exit status of `start`: 0 running, 3 cannot start here (not root, packages missing), 1 failed.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/mimic-slurm}
PORT=${SLURM_LOCAL_PORT:-16817}
CTLD_PORT=$PORT
SLURMD_PORT=$((PORT + 1))
DBD_PORT=$((PORT + 2))
DB_PORT=$((PORT + 3))
CONF=$DIR/etc/slurm.conf
HOST=$(hostname -s)
# Daemons in start order; `stop` goes in reverse. Each runs in the foreground of its own session,
# its pid in $DIR/pids/<name>.pid (the pid of the daemon itself: setsid and setpriv exec it).
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { printf 'slurm_local: %s\n' "$*" >&2; }
die() { log "$1"; exit "${2:-1}"; }

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# A process that exited but was not reaped yet (a zombie, until init gets to it) is not running.
running() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# pid of a daemon we started, if it is still that daemon (a recycled pid is not ours).
alive_pid() {
    local name=$1 f=$DIR/pids/$1.pid pid comm
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -n "$pid" ] && running "$pid" || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    case $name in
        mariadbd) [[ $comm == mariadbd || $comm == mysqld ]] || return 1 ;;
        *) [[ $comm == "$name"* ]] || return 1 ;;
    esac
    echo "$pid"
}

# Start "$@" detached, stdio to $DIR/log/<name>.log, and record its pid.
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$DIR/log/$name.log" 2>&1 &
    echo $! >"$DIR/pids/$name.pid"
}

wait_for() { # seconds, description, command...
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            return 1
        fi
        sleep 0.2
    done
}

fail_start() {
    log "$1; logs in $DIR/log/:"
    tail -n 20 "$DIR"/log/*.log >&2 2>/dev/null || true
    [ -n "${SLURM_LOCAL_KEEP_ON_FAIL:-}" ] || stop_all
    exit 1
}

check_can_start() {
    [ "$(id -u)" = 0 ] || die "needs root (daemons, munge user); not root here" 3
    local missing=()
    for b in munged mungekey mariadbd mariadb-install-db mariadb-admin slurmdbd slurmctld \
            slurmd sbatch sacct setpriv; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    id munge >/dev/null 2>&1 || missing+=("user munge")
    [ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (make slurm-deps installs \
slurm-wlm munge slurmdbd mariadb-server)" 3
}

write_configs() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster for rehearsals and tests.
ClusterName=mimiclocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
# A requeued job may start again cred_expire + 1 s later (default 121 s).
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers, CI): plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# Cores and memory are consumable, so small jobs share the node; a job without --mem gets
# DefMemPerCPU per core (unset, every job would take the whole node's memory: one at a time).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=5
# Accounting through slurmdbd: submitit reads job states with sacct.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# The munge socket for slurmdbd connections (AuthInfo covers only the others).
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
InactiveLimit=0
MinJobAge=300
KillWait=${SLURM_LOCAL_KILLWAIT:-30}
Waittime=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start() {
    check_can_start
    for d in "${DAEMONS[@]}"; do
        if pid=$(alive_pid "$d"); then
            die "already running ($d, pid $pid); run '$0 stop' first"
        fi
    done
    local t0=$SECONDS
    # Wipe an earlier cluster's folder (never a folder this script did not make).
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -e "$DIR/.slurm_local" ]; then
        die "$DIR is not empty and not a slurm_local folder; set SLURM_LOCAL_DIR to another"
    fi
    rm -rf "${DIR:?}"/* "$DIR/.slurm_local"
    mkdir -p "$DIR"/{etc,state,spool/slurmd,run,log,pids,munge,mysql}
    chmod 755 "$DIR"
    touch "$DIR/.slurm_local"
    write_configs
    export SLURM_CONF=$CONF

    # munge: its own key and socket, run as user munge (munged refuses unsafe permissions).
    mungekey --create --keyfile="$DIR/munge/munge.key" 2>>"$DIR/log/munged.log" \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chown -R munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    chmod 600 "$DIR/munge/munge.key"
    touch "$DIR/log/munged.log"
    chown munge:munge "$DIR/log/munged.log"
    spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
        --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/log/munged.log"
    wait_for 10 munged test -S "$DIR/munge/munge.socket" || fail_start "munged did not start"

    # MariaDB for slurmdbd: its own data folder, TCP on 127.0.0.1 only, no grant tables (a
    # throwaway database nobody else can reach).
    mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=root \
        --auth-root-authentication-method=normal --skip-test-db >>"$DIR/log/mariadbd.log" 2>&1 \
        || fail_start "mariadb-install-db failed"
    spawn mariadbd /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" \
        --socket="$DIR/mysql/mysqld.sock" --pid-file="$DIR/mysql/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-grant-tables --skip-name-resolve \
        --innodb-buffer-pool-size=32M --log-error="$DIR/log/mariadbd.log"
    wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$DIR/mysql/mysqld.sock" ping \
        || fail_start "mariadbd did not start"

    spawn slurmdbd /usr/sbin/slurmdbd -D
    wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT" \
        || fail_start "slurmdbd did not start"
    # The cluster must be known to the database before slurmctld registers.
    wait_for 30 "cluster in slurmdbd" sacctmgr -i add cluster mimiclocal \
        || fail_start "sacctmgr add cluster failed"

    spawn slurmctld /usr/sbin/slurmctld -D -i
    wait_for 30 slurmctld scontrol ping || fail_start "slurmctld did not start"
    spawn slurmd /usr/sbin/slurmd -D
    wait_for 60 "idle node" bash -c "sinfo -h -N -o %t | grep -qx idle" \
        || fail_start "the node did not become idle ($(sinfo -h -N -o '%t %E' 2>&1))"
    log "cluster up in $((SECONDS - t0)) s: node $HOST, $(nproc) CPUs, folder $DIR"
    echo "export SLURM_CONF=$CONF"
}

stop_all() {
    export SLURM_CONF=$CONF
    # Jobs first, while slurmctld and slurmd can still end them.
    if alive_pid slurmctld >/dev/null && alive_pid slurmd >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # A job step that ignores SIGTERM gets SIGKILL KillWait seconds later.
            local killwait
            killwait=$(sed -n 's/^KillWait=//p' "$CONF")
            wait_for $((${killwait:-30} + 10)) "jobs gone" \
                bash -c '[ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ]' \
                || log "jobs still ending; stopping the daemons anyway"
        fi
    fi
    local i name pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[$i]}
        pid=$(alive_pid "$name") || { rm -f "$DIR/pids/$name.pid"; continue; }
        kill -TERM "$pid" 2>/dev/null || true
        local end=$((SECONDS + 15))
        while running "$pid" && ((SECONDS < end)); do sleep 0.1; done
        if running "$pid"; then
            log "$name (pid $pid) ignored SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/pids/$name.pid"
        log "stopped $name (pid $pid)"
    done
}

status() {
    local down=0 name pid
    for name in "${DAEMONS[@]}"; do
        if pid=$(alive_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            down=1
        fi
    done
    if [ $down = 0 ]; then
        SLURM_CONF=$CONF sinfo -N -o '%N %t %c %m' || true
        SLURM_CONF=$CONF squeue || true
    fi
    return $down
}

case ${1:-} in
    start) start ;;
    stop) stop_all ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
