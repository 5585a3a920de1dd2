#!/usr/bin/env bash
# resources/kubernetes/: schema validation, cross-references, the pod's command
# line and probe against the binary (see kubernetes_check.py).
set -euo pipefail
KV_VERSION=1.37.0
venv=$TOOLS/k8s-venv
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    echo "[deploy] pip install kubernetes-validate==$KV_VERSION (into $venv)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi
exec "$venv/bin/python" "$DEPLOY_DIR/kubernetes_check.py" resources/kubernetes "$VFLAUNCH_BIN"
