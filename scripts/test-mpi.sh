#!/usr/bin/env bash
# The MPI tests (the `mpi` features, Open MPI): the sharded ReduNet and invariant ReduNet against one process
# under `mpirun -n 2` (crates/models/tests/mpi.rs, which asserts a world of two), and the `rate` binary
# under mpirun (crates/cli/tests/mpi_cli.rs: fit, train, invariant experiments, refusals).
# Needs: apt-get install -y openmpi-bin libopenmpi-dev libclang-dev
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES=rate-cli/mpi,models/mpi
# cargo's output goes to a temporary file and is printed from it (`tee /dev/stderr` would reopen, and
# truncate, a log file that stderr is redirected to)
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo test --release -p models -p rate-cli --features "$FEATURES" --test mpi --no-run >"$build_log" 2>&1 \
    || { cat "$build_log" >&2; exit 1; }
cat "$build_log" >&2
exe=$(sed -n 's/.*Executable tests\/mpi.rs (\(.*\))/\1/p' "$build_log" | tail -1)
if [ -z "$exe" ]; then
    echo "test-mpi: could not find the tests/mpi.rs executable" >&2
    exit 1
fi
echo "==> mpirun -n 2 $exe"
mpirun --allow-run-as-root --oversubscribe -n 2 "$exe"
echo "==> cargo test --release -p models -p rate-cli --features $FEATURES --test mpi_cli"
cargo test --release -p models -p rate-cli --features "$FEATURES" --test mpi_cli
