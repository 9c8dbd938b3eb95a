#!/bin/bash
# Extract a backbone's features of a large dataset as a SLURM array (one contiguous block of shards per
# task), then merge the parts into the one cache `ctssl knn` / `ctssl probe` read as a bank.
#   CTSSL_TASKS=64 slurm/extract.sh --data /scratch/ct-shards --backbone runs/simclr-ct/backbone.safetensors \
#       --out /scratch/eval
# Arguments go to `ctssl extract` (both the tasks and the merge). Optional: CTSSL_ARRAY_LIMIT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CTSSL_TASKS:?set CTSSL_TASKS to the number of array tasks}"
array="0-$((CTSSL_TASKS - 1))${CTSSL_ARRAY_LIMIT:+%${CTSSL_ARRAY_LIMIT}}"
tasks=$(sbatch --parsable --array="$array" "$here/extract.sbatch" "$@" --num-tasks "$CTSSL_TASKS")
merge=$(sbatch --parsable --dependency="afterok:${tasks}" --export=ALL,CTSSL_MERGE=1 "$here/extract.sbatch" "$@" \
    --num-tasks "$CTSSL_TASKS")
echo "submitted: tasks ${tasks} (array ${array}), merge ${merge}"
