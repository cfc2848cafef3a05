#!/usr/bin/env bash
# Installs what the test suite needs when it is missing, and only then:
#   - Debian: coturn (turnutils_uclient, turnutils_peer, turnserver), prometheus (promtool),
#     systemd (systemd-analyze, for config/confer.service), redis-server (the cluster's
#     store; tests/common/redis.rs starts one per test on a free loopback port)
#   - .venv: aiortc, schemathesis and friends (tests/interop/requirements.txt)
#   - Debian's chromium, playwright-core and axe-core (tests/browser/package.json) for the web page
#   - cargo-fuzz, for scripts/fuzz.sh
# Idempotent; the fast path (everything present) takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v turnutils_uclient >/dev/null 2>&1 || need_apt+=(coturn)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # coturn's package starts nothing by default; make sure no turnserver holds 3478.
  systemctl disable --now coturn >/dev/null 2>&1 || true
  # Nor a Redis on 6379: the tests start their own.
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

req=tests/interop/requirements.txt
stamp=.venv/.confer-requirements
if [ ! -x .venv/bin/python ] || ! cmp -s "$req" "$stamp" 2>/dev/null; then
  echo "setup: creating .venv with $(tr '\n' ' ' < "$req")"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
# Each package of tests/browser/package.json at the version it pins.
node_ok=true
for pkg in playwright-core axe-core; do
  want=$(grep -o "\"$pkg\": *\"[^\"]*\"" tests/browser/package.json | grep -o '[0-9][0-9.]*')
  have=tests/browser/node_modules/$pkg/package.json
  if [ ! -f "$have" ] || ! grep -q "\"version\": \"$want\"" "$have"; then node_ok=false; fi
done
if [ "$node_ok" = false ]; then
  echo "setup: installing tests/browser's playwright-core and axe-core (no browser download; Debian's chromium is used)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
echo "setup: ok (coturn $(command -v turnutils_uclient >/dev/null && echo yes), promtool $(command -v promtool >/dev/null && echo yes), redis-server $(command -v redis-server >/dev/null && echo yes), systemd-analyze $(command -v systemd-analyze >/dev/null && echo yes), .venv $(.venv/bin/python -c 'import aiortc; print(aiortc.__version__)'), $(cargo fuzz --version))"
