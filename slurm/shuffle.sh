#!/bin/bash
# Submit `ctssl shards shuffle` as SLURM arrays: scatter (one task per group of input shards) -> gather
# (one task per bucket) -> merge, chained with afterok. The plan runs here: it only reads the manifest.
#   slurm/shuffle.sh /scratch/ct-shards /scratch/ct-shuffled [--seed 0] [--bucket-mb 1024]
# Options after the two folders go to the plan (ctssl shards shuffle --help). Optional:
# CTSSL_ARRAY_LIMIT=64 (at most 64 tasks at once); SBATCH_* variables apply to every job.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: slurm/shuffle.sh SRC OUT [plan options]}
out=${2:?usage: slurm/shuffle.sh SRC OUT [plan options]}
shift 2
ctssl=${CTSSL:-ctssl}
read -r _ scatter _ gather < <($ctssl shards shuffle "$src" --out "$out" --phase plan "$@")
limit=${CTSSL_ARRAY_LIMIT:+%${CTSSL_ARRAY_LIMIT}}
export CTSSL_SHUFFLE_SRC="$src" CTSSL_SHUFFLE_OUT="$out"
a=$(sbatch --parsable --export=ALL,CTSSL_PHASE=scatter --array="0-$((scatter - 1))$limit" "$here/shuffle.sbatch")
b=$(sbatch --parsable --export=ALL,CTSSL_PHASE=gather --dependency="afterok:${a}" \
    --array="0-$((gather - 1))$limit" "$here/shuffle.sbatch")
c=$(sbatch --parsable --export=ALL,CTSSL_PHASE=merge --dependency="afterok:${b}" "$here/shuffle.sbatch")
echo "submitted: scatter ${a} (${scatter} tasks), gather ${b} (${gather} tasks), merge ${c}"
