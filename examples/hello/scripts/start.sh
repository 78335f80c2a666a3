#!/bin/bash
# "Starts" the service: publishes the address it would answer on.
set -euo pipefail
ctx logger info "starting ${service} on $(ctx instance id)"
ctx instance runtime-properties address 127.0.0.1
if [ -n "${port:-}" ]; then
  ctx instance runtime-properties port "${port}"
fi
