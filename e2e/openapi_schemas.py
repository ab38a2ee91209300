#!/usr/bin/env python3
"""Writes kubeconform schemas from an API server's OpenAPI v2 document, offline.

Usage: openapi_schemas.py OPENAPI_JSON OUT_DIR

OUT_DIR gets `_definitions.json` (every definition, references rewritten to point into it)
and one `<kind>-<group>-<version>.json` per kind (`<kind>-<version>.json` for the core group),
the layout kubeconform reads with
`-schema-location 'OUT_DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'`. The API server is the
cluster `make up` built, with the chart's CRD installed, so the schemas are exactly what that
Kubernetes version and our CRD accept.
"""
import json
import os
import sys


def rewrite(node):
    """Points references into _definitions.json, and makes objects with known properties
    refuse unknown ones (as `kubectl apply` warns about them; the API server would drop them
    silently)."""
    if isinstance(node, dict):
        out = {
            k: ("_definitions.json" + v if k == "$ref" and isinstance(v, str) and v.startswith("#/definitions/") else rewrite(v))
            for k, v in node.items()
        }
        if (
            "properties" in out
            and isinstance(out["properties"], dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [rewrite(v) for v in node]
    return node


def main():
    with open(sys.argv[1]) as f:
        definitions = json.load(f)["definitions"]
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rewritten = rewrite(definitions)
    with open(os.path.join(out, "_definitions.json"), "w") as f:
        json.dump({"definitions": rewritten}, f)
    written = 0
    for schema in rewritten.values():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            group = gvk["group"].split(".")[0]
            name = gvk["kind"].lower() + (f"-{group}" if group else "") + f"-{gvk['version']}.json"
            with open(os.path.join(out, name), "w") as f:
                json.dump(schema, f)
            written += 1
    print(f"{written} kind schemas in {out}")


if __name__ == "__main__":
    main()
