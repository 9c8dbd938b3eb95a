#!/bin/bash
# Submit an evaluation sweep: the job list is planned here, then an array with one task per job,
# then the report step (afterany: it runs even if some tasks failed, and names them).
#   CTSSL_SWEEP=sweep.yaml slurm/eval-sweep.sh
# Optional: CTSSL_ARRAY_LIMIT=16 (at most 16 tasks at once); extra arguments go to sbatch for the
# array (e.g. --partition=gpu); SBATCH_* environment variables apply to both jobs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CTSSL_SWEEP:?set CTSSL_SWEEP to the sweep YAML file}"
ctssl=${CTSSL:-ctssl}
count=$($ctssl sweep plan --config "$CTSSL_SWEEP" --count)   # also writes the plan (OUT/sweep.json)
array="0-$((count - 1))${CTSSL_ARRAY_LIMIT:+%${CTSSL_ARRAY_LIMIT}}"
tasks=$(sbatch --parsable --array="$array" "$@" "$here/eval-sweep.sbatch")
report=$(sbatch --parsable --dependency="afterany:${tasks}" "$here/eval-report.sbatch")
echo "submitted: sweep ${tasks} (array ${array}, ${count} jobs), report ${report}"
