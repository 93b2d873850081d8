"""Print the directory of each importable nvidia-* Python package (namespace
package 'nvidia') named on the command line, one a line; absent ones are left
out. Used by scripts/gpu-check.sh and scripts/gpu-bench.sh to find cuBLAS,
cuDNN, NCCL and the CUDA runtime inside the Python packages."""
import importlib.util
import sys

for m in sys.argv[1:]:
    try:
        s = importlib.util.find_spec(m)
    except Exception:
        s = None
    if s and s.submodule_search_locations:
        print(list(s.submodule_search_locations)[0])
