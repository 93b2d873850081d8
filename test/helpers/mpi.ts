// Whether data-parallel tests can run here: a build with MPI and an mpirun.
// Skipped with the reason elsewhere; under CI=true they run and fail instead
// (.ci/run installs OpenMPI).
import { spawnSync } from 'node:child_process';

import { native } from '../../src/tensor/native';

export function mpiUnavailable(): string | null {
  if (!native().info().mpi) return 'this build has no MPI (apt-get install libopenmpi-dev openmpi-bin, then npm run build:native)';
  if (spawnSync('mpirun', ['--version'], { stdio: 'ignore' }).status !== 0) return 'mpirun not found (apt-get install openmpi-bin)';
  return null;
}

export function mpiSkip(): string | false {
  const why = mpiUnavailable();
  return why && !process.env.CI ? why : false;
}
