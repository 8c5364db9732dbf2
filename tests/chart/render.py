#!/usr/bin/env python3
"""Helm's own engine for tests/chart.rs: lint, schema-check and render charts/clusterdns.

Uses helm-python-sdk (`import helm_python`), which wraps Helm's Go SDK (no helm binary).

Reads one JSON request on stdin:
    {"chart": DIR, "release": NAME, "namespace": NS,
     "requests": [{"op": "render" | "lint" | "validate", "values": {...}}, ...]}
and writes one JSON answer on stdout:
    {"helm": VERSION, "results": [...]}, one result per request, in order:
      render:   {"ok": true, "manifests": {"<chart>/templates/x.yaml": "..."}} or
                {"ok": false, "error": "..."}
      lint:     {"ok": true, "report": {"messages": [...], "errors": [...]}} (strict mode)
      validate: {"ok": true} or {"ok": false, "error": "..."} (values.schema.json)
or, when helm_python cannot be imported: {"skip": "why"} (exit code 0 either way).
"""

import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    try:
        import helm_python as helm
    except Exception as error:  # not installed, or its native library does not load
        json.dump({"skip": f"cannot import helm_python ({error}); pip install helm-python-sdk"}, sys.stdout)
        return 0

    results = []
    with helm.Chart.load(request["chart"]) as chart:
        for item in request["requests"]:
            op, values = item["op"], item.get("values") or {}
            try:
                if op == "render":
                    manifests = chart.render(
                        values=values,
                        name=request["release"],
                        namespace=request["namespace"],
                        is_install=True,
                    )
                    results.append({"ok": True, "manifests": manifests})
                elif op == "lint":
                    report = helm.lint(
                        request["chart"], values, strict=True, namespace=request["namespace"]
                    )
                    results.append({"ok": True, "report": report})
                elif op == "validate":
                    chart.validate_schema(values)
                    results.append({"ok": True})
                else:
                    raise ValueError(f"unknown op {op!r}")
            except helm.HelmError as error:
                results.append({"ok": False, "error": str(error)})
    json.dump({"helm": helm.helm_sdk_version(), "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
