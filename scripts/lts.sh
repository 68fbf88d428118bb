#!/usr/bin/env bash
# Runs a command on the Node.js LTS weft is built for (scripts/node-env.sh installs it when
# the machine's Node is older): `npm start`, `npm test` and `npm run bench` go through here.
set -euo pipefail
source "$(dirname "$0")/node-env.sh"
exec "$@"
