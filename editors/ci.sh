#!/usr/bin/env bash
# CI for the editor clients, run after the Python tests with the repository's venv active
# (so that `python3` can run `-m lsp_server`): the VS Code extension's install, lint,
# type check, tests (unit and against the real server) and .vsix packaging.
set -euo pipefail
cd "$(dirname "$0")/vscode"

export SWIFTGUARD_PYTHON="${SWIFTGUARD_PYTHON:-$(command -v python3)}"
"$SWIFTGUARD_PYTHON" -c 'import lsp_server' || {
  echo "editors/ci.sh: $SWIFTGUARD_PYTHON cannot import lsp_server; activate the repository's venv first" >&2
  exit 1
}

npm ci --no-audit --no-fund
npm run lint
npm run typecheck
npm test
npm run package
# The package must hold the compiled extension and its runtime dependency, not the tests.
"$SWIFTGUARD_PYTHON" - <<'PY'
import sys, zipfile
names = zipfile.ZipFile("swiftguard.vsix").namelist()
need = ["extension/package.json", "extension/out/extension.js", "extension/node_modules/vscode-languageclient/package.json"]
missing = [n for n in need if n not in names]
stray = [n for n in names if n.startswith(("extension/src/", "extension/out/test/"))]
if missing or stray:
    sys.exit(f"swiftguard.vsix: missing {missing}, unexpected {stray[:5]}")
PY
# Load the packaged extension's module graph (with a stand-in for the `vscode` module,
# which only exists inside VS Code): every file it requires must be in the package.
unpacked="$(mktemp -d)"
trap 'rm -rf "$unpacked"' EXIT
"$SWIFTGUARD_PYTHON" -m zipfile -e swiftguard.vsix "$unpacked"
node -e '
  const Module = require("module");
  const stub = new Proxy({}, { get: (target, key) => (target[key] ??= class {}) });
  const resolve = Module._resolveFilename;
  Module._resolveFilename = function (request, ...rest) {
    return request === "vscode" ? "vscode" : resolve.call(this, request, ...rest);
  };
  require.cache.vscode = { id: "vscode", filename: "vscode", loaded: true, exports: stub };
  const extension = require(process.argv[1]);
  require(require.resolve("vscode-languageclient/node", { paths: [process.argv[1]] }));
  if (typeof extension.activate !== "function" || typeof extension.deactivate !== "function") {
    throw new Error("extension.js does not export activate/deactivate");
  }
' "$unpacked/extension/out/extension.js"
echo "editors/ci.sh: OK ($(du -h swiftguard.vsix | cut -f1) swiftguard.vsix)"
