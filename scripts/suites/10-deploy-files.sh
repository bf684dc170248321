#!/usr/bin/env bash
# Validate Dockerfile, compose, Kubernetes and monitoring files offline.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ci/validate-deploy.sh
