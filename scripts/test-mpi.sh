#!/usr/bin/env bash
# The MPI tests (the `mpi` features, Open MPI): the sharded ReduNet and invariant ReduNet against one process
# under `mpirun -n 2` (crates/models/tests/mpi.rs, which asserts a world of two), and the `rate` binary
# under mpirun (crates/cli/tests/mpi_cli.rs: fit, train, invariant experiments, refusals).
# Needs: apt-get install -y openmpi-bin libopenmpi-dev libclang-dev
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES=rate-cli/mpi,models/mpi
exe=$(cargo test --release -p models -p rate-cli --features "$FEATURES" --test mpi --no-run 2>&1 \
    | tee /dev/stderr | sed -n 's/.*Executable tests\/mpi.rs (\(.*\))/\1/p' | tail -1)
if [ -z "$exe" ]; then
    echo "test-mpi: could not find the tests/mpi.rs executable" >&2
    exit 1
fi
echo "==> mpirun -n 2 $exe"
mpirun --allow-run-as-root --oversubscribe -n 2 "$exe"
echo "==> cargo test --release -p rate-cli --features $FEATURES --test mpi_cli"
cargo test --release -p models -p rate-cli --features "$FEATURES" --test mpi_cli
