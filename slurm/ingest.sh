#!/bin/bash
# Submit the whole SLURM ingest: plan -> array of CTSSL_NUM_TASKS tasks -> merge, chained with
# afterok dependencies. Arguments go to the plan (sources and ingest options).
#   CTSSL_OUT=/scratch/ct-shards CTSSL_NUM_TASKS=256 slurm/ingest.sh /archive/ct \
#       --salt-file ~/.ctssl/salt
# Optional: CTSSL_ARRAY_LIMIT=64 (at most 64 tasks at once); sbatch's own SBATCH_PARTITION,
# SBATCH_ACCOUNT, ... environment variables apply to all three jobs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CTSSL_OUT:?set CTSSL_OUT to the output (shard) folder}"
: "${CTSSL_NUM_TASKS:?set CTSSL_NUM_TASKS to the number of array tasks}"
array="0-$((CTSSL_NUM_TASKS - 1))${CTSSL_ARRAY_LIMIT:+%${CTSSL_ARRAY_LIMIT}}"
plan=$(sbatch --parsable "$here/ingest-plan.sbatch" "$@")
tasks=$(sbatch --parsable --dependency="afterok:${plan}" --array="$array" "$here/ingest-task.sbatch")
merge=$(sbatch --parsable --dependency="afterok:${tasks}" "$here/ingest-merge.sbatch")
echo "submitted: plan ${plan}, tasks ${tasks} (array ${array}), merge ${merge}"
