#!/bin/bash
# Prepares the node: records when it was made.
set -euo pipefail
ctx logger info "creating $(ctx instance id)"
ctx instance runtime-properties created_at "$(date -u +%FT%TZ)"
