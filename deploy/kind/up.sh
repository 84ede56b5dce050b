#!/usr/bin/env bash
# Create a local kind cluster running loopscale with Prometheus and Grafana:
#   1. kind cluster (cluster.yaml: one control-plane, two workers, Grafana/Prometheus ports),
#   2. docker build of the workload, operator and reference (Express, FastAPI) images, loaded
#      into the cluster's nodes,
#   3. kube-prometheus-stack (kube-prometheus-stack.values.yaml: dashboards sidecar on,
#      loopscale's monitors selected),
#   4. the loopscale chart (CRD, operator, dashboards, monitors),
# then print the Grafana address and login. Safe to run again: every step is create-or-update.
#
# Needs: docker, kind, kubectl, helm. Settings (environment):
#   LOOPSCALE_KIND_CLUSTER  cluster name (default: loopscale)
#   LOOPSCALE_IMAGE_TAG     tag of the images (default: dev)
#   KPS_VERSION             kube-prometheus-stack chart version (default: the repository's latest)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster="${LOOPSCALE_KIND_CLUSTER:-loopscale}"
tag="${LOOPSCALE_IMAGE_TAG:-dev}"
workload_image="loopscale/loopscale-workload:${tag}"
operator_image="loopscale/loopscale:${tag}"
express_image="loopscale/loopscale-reference-express:${tag}"
fastapi_image="loopscale/loopscale-reference-fastapi:${tag}"
monitoring_namespace="monitoring"
kps_release="kube-prometheus-stack"
loopscale_namespace="loopscale-system"

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: $1 is needed ($2)" >&2
    exit 1
  fi
}
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/"

step() { printf '\n==> %s\n' "$*"; }

step "kind cluster ${cluster}"
if kind get clusters 2>/dev/null | grep -qx "${cluster}"; then
  echo "cluster ${cluster} exists; reusing it"
else
  kind create cluster --name "${cluster}" --config "${here}/cluster.yaml" --wait 180s
fi
kubectl config use-context "kind-${cluster}" >/dev/null

step "images ${workload_image}, ${operator_image}, ${express_image}, ${fastapi_image}"
docker build --tag "${workload_image}" --file "${root}/workload/Dockerfile" "${root}"
docker build --tag "${operator_image}" --file "${root}/operator/Dockerfile" "${root}"
# The reference servers (spec.workload.implementation: reference): each folder is its own context.
docker build --tag "${express_image}" "${root}/workload/reference/express"
docker build --tag "${fastapi_image}" "${root}/workload/reference/fastapi"
kind load docker-image --name "${cluster}" \
  "${workload_image}" "${operator_image}" "${express_image}" "${fastapi_image}"

step "kube-prometheus-stack in namespace ${monitoring_namespace}"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm repo update prometheus-community >/dev/null
kps_version_args=()
if [[ -n "${KPS_VERSION:-}" ]]; then
  kps_version_args=(--version "${KPS_VERSION}")
fi
helm upgrade --install "${kps_release}" prometheus-community/kube-prometheus-stack \
  ${kps_version_args[@]+"${kps_version_args[@]}"} \
  --namespace "${monitoring_namespace}" --create-namespace \
  --values "${here}/kube-prometheus-stack.values.yaml" \
  --wait --timeout 10m

step "loopscale chart in namespace ${loopscale_namespace}"
helm upgrade --install loopscale "${root}/charts/loopscale" \
  --namespace "${loopscale_namespace}" --create-namespace \
  --set-string "image.repository=${operator_image%:*}" \
  --set-string "image.tag=${tag}" \
  --set-string "image.pullPolicy=IfNotPresent" \
  --set-string "workloadImage.repository=${workload_image%:*}" \
  --set-string "workloadImage.tag=${tag}" \
  --set-string "workloadImage.pullPolicy=IfNotPresent" \
  --set-string "referenceImages.express.repository=${express_image%:*}" \
  --set-string "referenceImages.express.tag=${tag}" \
  --set-string "referenceImages.fastapi.repository=${fastapi_image%:*}" \
  --set-string "referenceImages.fastapi.tag=${tag}" \
  --set "serviceMonitor.enabled=true" \
  --set-string "serviceMonitor.labels.release=${kps_release}" \
  --set "podMonitor.enabled=true" \
  --set-string "podMonitor.labels.release=${kps_release}" \
  --set "dashboards.enabled=true" \
  --wait --timeout 5m

password="$(kubectl get secret --namespace "${monitoring_namespace}" "${kps_release}-grafana" \
  --output jsonpath='{.data.admin-password}' | base64 --decode)"

cat <<DONE

loopscale is running on kind cluster "${cluster}".
  Grafana:    http://localhost:3000   login: admin / ${password}
              dashboards: loopscale / Scaling comparison, Live run, Operator health
  Prometheus: http://localhost:9090
Run an experiment:
  kubectl apply -f ${root#"${PWD}"/}/deploy/examples/quick.yaml
  kubectl get experiments -w
The same with the real Express and FastAPI: deploy/examples/reference.yaml
Remove everything: deploy/kind/down.sh
DONE
