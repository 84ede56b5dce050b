#!/usr/bin/env bash
# Delete the kind cluster that up.sh created (with everything in it). The images stay in the
# local docker image store.
#   LOOPSCALE_KIND_CLUSTER  cluster name (default: loopscale)
set -euo pipefail

cluster="${LOOPSCALE_KIND_CLUSTER:-loopscale}"

if ! command -v kind >/dev/null 2>&1; then
  echo "error: kind is needed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2
  exit 1
fi
if kind get clusters 2>/dev/null | grep -qx "${cluster}"; then
  kind delete cluster --name "${cluster}"
else
  echo "no kind cluster named ${cluster}; nothing to do"
fi
