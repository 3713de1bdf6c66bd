"""Ensembles of N classifiers behind one interface, whatever executes the members.

The output is the mean of the members' log-softmax (as in the authors' code). The members'
feature maps are stacked into one (N, B, C, h, w) tensor and the heads read from that stack, so a
single ``autograd.grad`` call yields every member's Grad-CAM — and a batched execution of the
members can replace the loop without touching anything else.

Execution strategies (``impl``), all numerically equivalent (tests/test_ensemble_batched.py):

* ``loop``: a Python loop over the N sub-models (many small kernels; fastest on CPU).
* ``wide``: one "wide" network on (B, N·C, H, W) tensors: grouped convolutions (groups = N),
  BatchNorm over N·C channels — per-member batch statistics by construction. Supports
  conv/BN/ReLU/pooling stacks and torchvision ResNet blocks (``small_cnn``, ``resnet*``).
* ``vmap``: ``torch.func.vmap`` over ``functional_call`` with stacked parameters and buffers;
  works for any backbone (DenseNet; EfficientNet in eval mode only, see :func:`vmap_blocker`).
* ``batched``: ``wide`` where the backbone supports it, else ``vmap`` — else (train-mode
  stochastic depth, whose in-place random draw vmap rejects: EfficientNet) the loop.
* ``auto``: chosen per device at forward time (:data:`AUTO_IMPL`; see BENCHMARKS.md).

Parameters always live in the N sub-modules (``backbones``, ``heads``): the batched strategies
stack them at each forward pass (differentiably), so the state_dict, the optimizer's parameter
list and every checkpoint are identical whatever ``impl`` is, and a run can switch strategies
between save and load. BatchNorm running statistics updated by a batched pass are written back
into the members' buffers, exactly as the loop would have updated them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimic_runner.models.classifier import BackboneFactory
from mimic_runner.models.output import ModelOutput

IMPLS = ("loop", "vmap", "wide", "batched", "auto")

#: What ``auto`` runs per device type. CPU: the loop (measured fastest with the default glibc
#: allocator, BENCHMARKS.md). CUDA: the batched execution — an expectation from the launch counts
#: (the loop issues ~N times more kernels) until measured on a GPU.
AUTO_IMPL = {"cpu": "loop", "cuda": "batched"}

# Modules that act on every channel independently: the wide network applies them as they are.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d)


def _resnet_blocks() -> tuple[type, ...]:
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (BasicBlock, Bottleneck)


def wide_supported(module: nn.Module) -> bool:
    """Whether :func:`wide_forward` can run this module (tree of supported module types)."""
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros"
    if isinstance(module, nn.BatchNorm2d):
        return module.track_running_stats and module.momentum is not None
    if isinstance(module, _CHANNELWISE):
        return True
    if isinstance(module, nn.Dropout):
        return module.p == 0
    if isinstance(module, (nn.Sequential, nn.ModuleList, *_resnet_blocks())):
        return all(wide_supported(m) for m in module.children())
    return False


def vmap_blocker(module: nn.Module) -> str | None:
    """Why ``vmap`` cannot run this module in its current mode, or None if it can.

    torchvision's stochastic depth draws its mask in place on a fresh (unbatched) tensor, which
    vmap refuses in train mode ("different inplace randomness on an unbatched tensor").
    """
    for name, m in module.named_modules():
        if type(m).__name__ == "StochasticDepth" and m.training and getattr(m, "p", 0) > 0:
            return f"{name} (StochasticDepth in train mode)"
    return None


def to_wide(features: Tensor) -> Tensor:
    """(N, B, C, h, w) -> (B, N·C, h, w); a view when ``features`` came from :func:`from_wide`."""
    return features.transpose(0, 1).flatten(1, 2)


def from_wide(x: Tensor, n: int) -> Tensor:
    """(B, N·C, h, w) -> (N, B, C, h, w), a view (member-major channel blocks)."""
    return x.unflatten(1, (n, -1)).transpose(0, 1)


def _expand(x: Tensor, n: int) -> Tensor:
    """A shared (B, C, H, W) input as every member's copy: (B, N·C, H, W)."""
    return x.repeat(1, n, 1, 1)


def _wide_conv(mods: Sequence[nn.Conv2d], x: Tensor, shared: bool) -> Tensor:
    m, n = mods[0], len(mods)
    w = torch.stack([c.weight for c in mods]).flatten(0, 1)  # (N·C_out, C_in/g, k, k)
    b = None if m.bias is None else torch.cat([c.bias for c in mods])
    if shared and m.groups == 1:
        # Every member reads the same input: one ordinary conv with N·C_out filters, no copy.
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, 1)
    if shared:
        x = _expand(x, n)
    return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups * n)


def _wide_bn(mods: Sequence[nn.BatchNorm2d], x: Tensor) -> Tensor:
    m = mods[0]
    w = None if m.weight is None else torch.cat([b.weight for b in mods])
    bias = None if m.bias is None else torch.cat([b.bias for b in mods])
    if not m.training:
        rm = torch.cat([b.running_mean for b in mods])
        rv = torch.cat([b.running_var for b in mods])
        return F.batch_norm(x, rm, rv, w, bias, False, 0.0, m.eps)
    # Batch statistics per channel = per member and channel, as in the loop. The running stats
    # are updated in place in the concatenated copies, then written back to the members.
    with torch.no_grad():
        rm = torch.cat([b.running_mean for b in mods])
        rv = torch.cat([b.running_var for b in mods])
    out = F.batch_norm(x, rm, rv, w, bias, True, m.momentum, m.eps)
    with torch.no_grad():
        torch._foreach_copy_([b.running_mean for b in mods], list(rm.chunk(len(mods))))
        torch._foreach_copy_([b.running_var for b in mods], list(rv.chunk(len(mods))))
        torch._foreach_add_([b.num_batches_tracked for b in mods], 1)
    return out


def wide_forward(mods: Sequence[nn.Module], x: Tensor, shared: bool) -> tuple[Tensor, bool]:
    """Run the N members' copies of one module as a single wide module.

    Args:
        mods: the same sub-module of each of the N members (identical architecture).
        x: (B, N·C, H, W) — member n's channels in block n — or, if ``shared``, a (B, C, H, W)
            input common to all members (the image, until the first convolution).

    Returns:
        The output in the same layout and whether it is still shared.
    """
    m, n = mods[0], len(mods)
    if isinstance(m, nn.Conv2d):
        return _wide_conv(mods, x, shared), False  # type: ignore[arg-type]
    if isinstance(m, nn.BatchNorm2d):
        return _wide_bn(mods, _expand(x, n) if shared else x), False  # type: ignore[arg-type]
    if isinstance(m, (*_CHANNELWISE, nn.Dropout)):
        return m(x), shared
    if isinstance(m, (nn.Sequential, nn.ModuleList)):
        for children in zip(*[list(mm.children()) for mm in mods]):
            x, shared = wide_forward(children, x, shared)
        return x, shared
    if isinstance(m, _resnet_blocks()):
        if shared:
            x, shared = _expand(x, n), False
        # torchvision's BasicBlock/Bottleneck.forward, on wide tensors.
        names = ["conv1", "bn1", "relu", "conv2", "bn2"]
        if hasattr(m, "conv3"):
            names += ["relu", "conv3", "bn3"]
        out = x
        for name in names:
            out, _ = wide_forward([getattr(mm, name) for mm in mods], out, False)
        identity = x
        if m.downsample is not None:
            identity, _ = wide_forward([mm.downsample for mm in mods], x, False)
        out = out + identity
        return m.relu(out), False
    raise NotImplementedError(f"wide execution does not support {type(m).__name__}")


class _Stages(nn.Module):
    """Runs stages [start, stop) of a backbone: the callable that ``functional_call`` swaps."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.bb = backbone

    def forward(self, x: Tensor, start: int, stop: int) -> Tensor:
        for stage in self.bb.stages[start:stop]:
            x = stage(x)
        return x


class EnsembleNet(nn.Module):
    """N independently initialised sub-models of one backbone.

    ``forward(x)`` -> ModelOutput with ``logits`` (B, K) = mean_n log_softmax(member_logits[n]),
    ``features`` (N, B, C, h, w) and ``member_logits`` (N, B, K). ``impl`` chooses how the
    members run (module docstring); it changes speed, never results or state_dict keys.
    """

    def __init__(self, backbone: BackboneFactory, in_channels: int, num_classes: int,
                 ensemble_size: int = 10, impl: str = "loop", explain_layer: int = -1) -> None:
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if impl not in IMPLS:
            from mimic_runner.errors import UserError

            raise UserError(f"model.ensemble_impl='{impl}': choose one of {', '.join(IMPLS)}")
        self.ensemble_size = ensemble_size
        self.impl = impl
        self.backbones = nn.ModuleList([backbone(in_channels=in_channels)
                                        for _ in range(ensemble_size)])
        self.explain_layer = self.backbones[0].stage_index(explain_layer)
        c = self.backbones[0].out_channels
        self.heads = nn.ModuleList([nn.Linear(c, num_classes) for _ in range(ensemble_size)])
        self.wide_ok = wide_supported(self.backbones[0].stages)

    def resolve_impl(self, device: torch.device) -> str:
        """The concrete strategy (loop | vmap | wide) that runs on ``device``."""
        impl = AUTO_IMPL.get(device.type, "batched") if self.impl == "auto" else self.impl
        if impl == "batched":
            impl = ("wide" if self.wide_ok
                    else "vmap" if vmap_blocker(self.backbones[0]) is None else "loop")
        if impl == "wide" and not self.wide_ok:
            raise NotImplementedError("ensemble_impl=wide: this backbone has modules the wide "
                                      "execution does not support; use vmap or batched")
        if impl == "vmap" and (why := vmap_blocker(self.backbones[0])) is not None:
            raise NotImplementedError(f"ensemble_impl=vmap cannot run {why}; use loop or batched")
        return impl

    def member_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_in, H, W) -> the explained maps (N, B, C, h, w) and the last maps."""
        impl = self.resolve_impl(x.device)
        if impl == "wide":
            return self._wide_features(x)
        if impl == "vmap":
            return self._vmap_features(x)
        return self._loop_features(x)

    def _split(self) -> tuple[int, int]:
        return self.explain_layer + 1, len(self.backbones[0].stages)

    def _loop_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.explain_layer
        features = torch.stack([b.forward_to(x, k) for b in self.backbones])
        if k == len(self.backbones[0].stages) - 1:
            return features, features
        # Later stages must read from the stacked tensor so that it stays upstream of the logits.
        last = torch.stack([b.forward_from(features[n], k) for n, b in enumerate(self.backbones)])
        return features, last

    def _wide_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = self.ensemble_size
        cut, total = self._split()
        stages = list(zip(*[list(b.stages) for b in self.backbones]))
        h, shared = x, True
        for mods in stages[:cut]:
            h, shared = wide_forward(mods, h, shared)
        if shared:  # no convolution before the explained layer: members see the same map
            h = _expand(h, n)
        features = from_wide(h, n)
        if cut == total:
            return features, features
        h = to_wide(features)  # a view: the later stages read from the stacked tensor
        for mods in stages[cut:]:
            h, _ = wide_forward(mods, h, False)
        return features, from_wide(h, n)

    def _vmap_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        from torch.func import functional_call, vmap

        cut, total = self._split()
        members = list(self.backbones)
        names = [name for name, _ in members[0].named_parameters()]
        params = {f"bb.{name}": torch.stack(ps) for name, *ps in
                  zip(names, *[[p for _, p in b.named_parameters()] for b in members])}
        bnames = [name for name, _ in members[0].named_buffers()]
        member_bufs = [[t for _, t in b.named_buffers()] for b in members]
        with torch.no_grad():
            buffers = {f"bb.{name}": torch.stack(bs) for name, *bs in zip(bnames, *member_bufs)}
        runner = _Stages(members[0])

        def run(p: dict[str, Tensor], bufs: dict[str, Tensor], inp: Tensor, start: int,
                stop: int) -> Tensor:
            return functional_call(runner, (p, bufs), (inp, start, stop))

        # Buffers are batched (in_dims=0) so train-mode BatchNorm updates each member's running
        # stats in place in the stacked copy; randomness="different" as N separate modules.
        features = vmap(run, in_dims=(0, 0, None, None, None), randomness="different")(
            params, buffers, x, 0, cut)
        last = features
        if cut < total:
            last = vmap(run, in_dims=(0, 0, 0, None, None), randomness="different")(
                params, buffers, features, cut, total)
        if self.training and buffers:
            with torch.no_grad():
                torch._foreach_copy_([t for bs in member_bufs for t in bs],
                                     [buffers[f"bb.{name}"][n] for n in range(len(members))
                                      for name in bnames])
        return features, last

    def member_logits(self, x: Tensor, n: int) -> Tensor:
        """(B, C_in, H, W) -> (B, K): member ``n`` alone, for gradients w.r.t. its own input
        (input attributions need one member per backward pass)."""
        pooled = self.backbones[n](x).mean(dim=(-2, -1))
        return self.heads[n](pooled)

    def forward(self, x: Tensor) -> ModelOutput:
        features, last = self.member_features(x)
        pooled = last.mean(dim=(-2, -1))  # (N, B, C)
        weight = torch.stack([h.weight for h in self.heads])  # (N, K, C)
        bias = torch.stack([h.bias for h in self.heads])  # (N, K)
        member_logits = torch.einsum("nbc,nkc->nbk", pooled, weight) + bias[:, None, :]
        logits = member_logits.log_softmax(dim=-1).mean(dim=0)
        return ModelOutput(logits=logits, features=features, member_logits=member_logits)
