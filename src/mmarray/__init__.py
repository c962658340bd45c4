"""mmarray: memory-mapped NumPy arrays with a C core, explicit close and no held descriptors.

>>> import mmarray, numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "demo.i32")
>>> with mmarray.open(path, dtype=np.int32, mode="w+", shape=5) as m:
...     m.array[:] = np.arange(5)
>>> with mmarray.open(path, dtype=np.int32, mode="r") as m:
...     m.array.tolist()
[0, 1, 2, 3, 4]
"""
from mmarray._api import MODES, Mapping, close, mapping_of, open
from mmarray._append import append_npy
from mmarray._compat import memmap, open_memmap
from mmarray._dask import to_dask
from mmarray._guard import MappedFileError, set_fault_guard
from mmarray._load import load
from mmarray._npy import create_npy
from mmarray._npz import CompressedMemberWarning, InMemoryMember, NpzMapping
from mmarray._npzwrite import save_npz
from mmarray._share import ArrayRef, ref

__all__ = ["open", "close", "mapping_of", "Mapping", "MODES", "memmap", "open_memmap",
           "load", "create_npy", "save_npz", "NpzMapping", "InMemoryMember",
           "CompressedMemberWarning", "ref", "ArrayRef", "to_dask", "MappedFileError",
           "set_fault_guard", "append_npy", "__version__"]
__version__ = "0.1.0"
