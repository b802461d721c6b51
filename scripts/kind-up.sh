#!/usr/bin/env bash
# Bring CroPS up on a local cluster: kind (default) or minikube, with cert-manager, KServe,
# KubeRay and Kubeflow Pipelines at pinned versions, the crops image built and loaded, and
# the platform applied from manifests/overlays/<cluster> (or the Helm chart with --chart).
# Step by step, with what each step does: docs/kind.md.
set -euo pipefail

KFP_VERSION=${KFP_VERSION:-2.14.3}
KUBERAY_VERSION=${KUBERAY_VERSION:-1.4.2}
KSERVE_VERSION=${KSERVE_VERSION:-v0.15.2}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.17.2}
IMAGE=${IMAGE:-crops:0.1.0}
NAMESPACE=crops

usage() {
  cat <<EOF
Usage: scripts/kind-up.sh [--kind | --minikube] [--name NAME] [--chart] [--no-build]
                          [--skip-platform]

  --kind           a kind cluster (default)
  --minikube       a minikube profile instead
  --name NAME      cluster or profile name (default: crops)
  --chart          install charts/crops with ci-values.yaml instead of the kustomize overlay
  --no-build       do not build ${IMAGE} (it must already be in the local image store)
  --skip-platform  do not install cert-manager, KServe, KubeRay and KFP (already there)

Environment: TORCH_INDEX_URL (required to build: PyTorch's CPU wheel index, see
docs/kind.md), KFP_VERSION (${KFP_VERSION}), KUBERAY_VERSION (${KUBERAY_VERSION}),
KSERVE_VERSION (${KSERVE_VERSION}), CERT_MANAGER_VERSION (${CERT_MANAGER_VERSION}),
IMAGE (${IMAGE}).
EOF
}

cluster=kind
name=crops
use_chart=false
build=true
platform=true
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kind) cluster=kind ;;
    --minikube) cluster=minikube ;;
    --name)
      [[ $# -ge 2 ]] || { echo "error: --name needs a value" >&2; exit 2; }
      name=$2
      shift
      ;;
    --chart) use_chart=true ;;
    --no-build) build=false ;;
    --skip-platform) platform=false ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Every missing tool at once, before anything is changed.
missing=()
for tool in "$cluster" kubectl helm docker; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "error: missing tools: ${missing[*]} (install them first; docs/kind.md lists versions)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "error: docker is installed but no container engine answers (is the daemon running?)" >&2
  exit 1
fi

cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "cluster: $cluster/$name"
if [[ $cluster == kind ]]; then
  if kind get clusters 2>/dev/null | grep -qx "$name"; then
    echo "kind cluster $name exists; using it"
  else
    kind create cluster --name "$name" --wait 120s
  fi
  kubectl config use-context "kind-$name"
else
  minikube start --profile "$name" --cpus 6 --memory 12g --cni calico
  kubectl config use-context "$name"
fi

if $platform; then
  step "cert-manager $CERT_MANAGER_VERSION (KServe's webhooks need it)"
  kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
  kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout=300s

  step "KServe $KSERVE_VERSION, Standard (RawDeployment) mode by default"
  kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
  kubectl -n kserve wait --for=condition=Available deployment/kserve-controller-manager --timeout=300s
  kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
  kubectl -n kserve patch configmap inferenceservice-config --type merge \
    -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"RawDeployment\"}"}}'

  step "KubeRay operator $KUBERAY_VERSION (namespace ray-system)"
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
  helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
    --namespace ray-system --create-namespace --wait

  step "Kubeflow Pipelines $KFP_VERSION (standalone, namespace kubeflow)"
  kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
  kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
  kubectl -n kubeflow wait --for=condition=Available deployment --all --timeout=900s
fi

if $build; then
  step "image $IMAGE"
  : "${TORCH_INDEX_URL:?set TORCH_INDEX_URL to PyTorch CPU wheel index (docs/kind.md)}"
  docker build -f docker/Dockerfile -t "$IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" .
fi
step "load $IMAGE into the cluster"
if [[ $cluster == kind ]]; then
  kind load docker-image "$IMAGE" --name "$name"
else
  minikube image load "$IMAGE" --profile "$name"
fi

step "CroPS"
kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE"
if ! kubectl -n "$NAMESPACE" get secret crops-llm >/dev/null 2>&1; then
  # A random key for the in-cluster vLLM; it exists only in the cluster.
  kubectl -n "$NAMESPACE" create secret generic crops-llm \
    --from-literal=api-key="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
if $use_chart; then
  helm upgrade --install crops charts/crops --namespace "$NAMESPACE" \
    -f charts/crops/profiles/small.yaml -f "charts/crops/profiles/$cluster.yaml"
else
  kubectl apply -k "manifests/overlays/$cluster"
fi
kubectl -n "$NAMESPACE" get rayjobs,inferenceservices,cronjobs,deployments

cat <<EOF

CroPS is applied. Next (docs/kind.md, sections 5 and 6): standalone KFP runs the pipeline's
pods in kubeflow, so the platform's ConfigMap, PVCs, accounts, Role and the Secret crops-llm
go there too; then
  kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &
  crops pipeline compile --out crops_pipeline.yaml --target cluster
  crops pipeline submit --host http://localhost:8080 --package crops_pipeline.yaml \\
    --namespace kubeflow --service-account crops-pipeline
EOF
