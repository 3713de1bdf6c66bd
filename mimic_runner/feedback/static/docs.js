// The offline API reference: renders /openapi.json (no inline script: the CSP forbids it).
"use strict";
fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const div = document.createElement("div");
      div.className = "op";
      const h = document.createElement("div");
      const m = document.createElement("span");
      m.className = "method";
      m.textContent = method.toUpperCase();
      const p = document.createElement("code");
      p.textContent = path;
      const s = document.createElement("span");
      s.className = "muted";
      s.textContent = ` ${op.summary || ""}`;
      h.append(m, p, s);
      div.appendChild(h);
      const params = (op.parameters || []).map((q) => `${q.name} (${q.in}${q.required ? ", required" : ""})`);
      if (params.length) {
        const d = document.createElement("div");
        d.textContent = "parameters: " + params.join(", ");
        div.appendChild(d);
      }
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (body) {
        const d = document.createElement("div");
        d.textContent = "JSON body: " + JSON.stringify(body.schema);
        div.appendChild(d);
      }
      ops.appendChild(div);
    }
  }
  document.getElementById("schemas").textContent = JSON.stringify((spec.components || {}).schemas || {}, null, 2);
}).catch((e) => { document.getElementById("ops").textContent = "cannot load /openapi.json: " + e; });
