# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""The engine: one mapped region per `Mapping`, its buffer exports and its lifetime.

Thin on purpose: types, errors and lifetimes live here; policy (argument checking, shapes,
modes, messages) lives in the Python modules. All OS work is done by the C layer (csrc/mm.h)
with the GIL released.

Lifetime rules
--------------
* Every buffer handed out -- a memoryview of the Mapping, or an array from ``Mapping.array``
  (through a private ``_ArrayExport`` that lives exactly as long as the array and its views) --
  counts as one export.
* ``close()`` with no live export unmaps at once; with live exports it marks the Mapping closed
  and the last release unmaps. Nothing ever reads or writes through an unmapped pointer.
* Operations that use the region with the GIL released (flush, advise, resident) hold an
  export for their duration, so a concurrent close defers the unmap until they finish.
* Counters change only while holding the GIL, and the view is copied out and cleared before
  the GIL is released to unmap, so racing threads cannot unmap twice or use a stale view.
"""
cimport cython
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.exc cimport PyErr_WriteUnraisable
from libc.stdint cimport uint64_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, memset, strlen

cimport numpy as cnp
from cpython.ref cimport Py_INCREF, Py_REFCNT
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsSsize_t
from cpython.pyport cimport PY_SSIZE_T_MAX

from mmarray._mm cimport *

import os as _os
import weakref as _weakref

import numpy as _np

cnp.import_array()


cdef extern from "Python.h":
    ctypedef struct PyObject
    void Py_LeaveRecursiveCall()
    ctypedef struct PyTypeObject:
        object (*tp_new)(PyTypeObject *, PyObject *, PyObject *)
        int (*tp_setattro)(PyObject *, PyObject *, PyObject *)
    int PyObject_GenericSetAttr(PyObject *, PyObject *, PyObject *)
    dict PyObject_GenericGetDict(object, void *)
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject *exc)
    unsigned long PyThread_get_thread_ident()
    ctypedef struct PyThreadState:
        unsigned long thread_id      # a field of CPython's (cpython/pystate.h), 3.8 on
    ctypedef struct PyInterpreterState
    ctypedef struct PyFrameObject
    PyInterpreterState *PyInterpreterState_Get()
    PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *interp)
    PyThreadState *PyThreadState_Next(PyThreadState *tstate)
    PyFrameObject *PyThreadState_GetFrame(PyThreadState *tstate)
    void Py_XDECREF(PyObject *)
    bint PyType_HasFeature(PyTypeObject *type, unsigned long feature)
    unsigned long Py_TPFLAGS_HEAPTYPE


cdef extern from "numpy/arrayobject.h":
    # numpy's C API (the .pxd leaves it commented out). Steals a reference to descr.
    object PyArray_NewFromDescr(object subtype, cnp.dtype descr, int nd, cnp.npy_intp *dims,
                                cnp.npy_intp *strides, void *data, int flags, object obj)


cdef extern from *:
    """
    /* Calls of a class that set_class_vectorcall was given: what type.__call__ (CPython's
       type_call) does for it -- cls.__new__(cls, *args, **kwargs), then the __init__ of the
       object's class if __new__ gave an instance of cls and that __init__ is not object's
       (which then does nothing) -- without the argument tuple and keyword dictionary that
       type_call builds for __new__. tp_vectorcall is "used for calls of this type object
       ... never inherited" (docs.python.org/3/c-api/typeobj.html, PyTypeObject.tp_vectorcall,
       3.9 on): subclasses keep type.__call__. */
    #define MM_CALL_ARGS_MAX 16

    static PyObject *mm_new_name = NULL;   /* "__new__", interned; set before the first use */

    /* The positional arguments as a tuple and the keywords as a dict (NULL if none), as
       type_call takes them; -1 (an exception set) on failure, nothing left to release. */
    static int
    mm_pack(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **tuple,
            PyObject **kwargs)
    {
        Py_ssize_t i, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        *kwargs = NULL;
        *tuple = PyTuple_New(nargs);
        if (*tuple == NULL)
            return -1;
        for (i = 0; i < nargs; i++) {        /* args holds nargs + nkw items */
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(*tuple, i, args[i]);
        }
        if (nkw == 0)
            return 0;
        *kwargs = PyDict_New();
        if (*kwargs == NULL)
            goto fail;
        for (i = 0; i < nkw; i++)            /* the values follow the nargs positionals */
            if (PyDict_SetItem(*kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0)
                goto fail;
        return 0;
    fail:
        Py_CLEAR(*tuple);
        Py_CLEAR(*kwargs);
        return -1;
    }

    static PyObject *
    mm_class_call(PyObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
    {
        PyObject *stack[1 + MM_CALL_ARGS_MAX];
        PyObject *new_func, *obj, *tuple, *kwargs;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        int status;
        if (nargs + nkw > MM_CALL_ARGS_MAX) {   /* type.__call__ itself */
            if (mm_pack(args, nargs, kwnames, &tuple, &kwargs) < 0)
                return NULL;
            obj = PyType_Type.tp_call(cls, tuple, kwargs);
            Py_DECREF(tuple);
            Py_XDECREF(kwargs);
            return obj;
        }
        new_func = PyObject_GetAttr(cls, mm_new_name);   /* looked up per call, as type_call */
        if (new_func == NULL)
            return NULL;
        stack[0] = cls;
        /* 1 + nargs + nkw <= 1 + MM_CALL_ARGS_MAX items: inside stack (checked above) */
        memcpy(stack + 1, args, (size_t)(nargs + nkw) * sizeof(PyObject *));
        obj = PyObject_Vectorcall(new_func, stack, (size_t)(nargs + 1), kwnames);
        Py_DECREF(new_func);
        if (obj == NULL || !PyObject_TypeCheck(obj, (PyTypeObject *)cls)
                || Py_TYPE(obj)->tp_init == PyBaseObject_Type.tp_init)
            return obj;
        /* An instance whose class has an __init__ (set on cls, or a subclass's): type_call
           calls it with the same arguments. */
        if (mm_pack(args, nargs, kwnames, &tuple, &kwargs) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
        status = Py_TYPE(obj)->tp_init(obj, tuple, kwargs);
        Py_DECREF(tuple);
        Py_XDECREF(kwargs);
        if (status < 0) {
            Py_DECREF(obj);
            return NULL;
        }
        return obj;
    }

    /* As _PyObject_MakeTpCall guards type_call: a __new__ or __init__ that calls the class
       again through C (cls.__new__ = cls) is a RecursionError, not a C stack overflow. */
    static PyObject *
    mm_class_vectorcall(PyObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
    {
        PyObject *obj;
        if (Py_EnterRecursiveCall(" while calling a Python object"))
            return NULL;
        obj = mm_class_call(cls, args, nargsf, kwnames);
        Py_LeaveRecursiveCall();
        return obj;
    }

    /* Pause the cyclic garbage collector: 1 if it was running (mm_gc_resume restarts it),
       0 if it was off already, -1 where this cannot be done (before 3.10, which has no
       PyGC_Disable: docs.python.org/3/c-api/gcsupport.html). An allocation can run a
       collection, and so any finalizer and gc.callbacks function, in CPython 3.11. */
    static int
    mm_gc_pause(void)
    {
    #if PY_VERSION_HEX >= 0x030A0000
        return PyGC_Disable();
    #else
        return -1;
    #endif
    }

    static void
    mm_gc_resume(int was_running)
    {
    #if PY_VERSION_HEX >= 0x030A0000
        if (was_running == 1)
            PyGC_Enable();
    #endif
    }

    /* 1 if no name of the tuple `names` is a data descriptor (a property, a slot) of the
       class cls, so that setting each on an instance whose class sets attributes as object
       does stores it in the instance dictionary; 0 if one is, or where this cannot be told.
       _PyType_Lookup as Cython's own code uses it (CYTHON_USE_PYTYPE_LOOKUP): the type's
       attribute cache and MRO dictionaries, no Python code run. */
    static int
    mm_names_stored_plainly(PyObject *cls, PyObject *names)
    {
    #if CYTHON_USE_PYTYPE_LOOKUP
        Py_ssize_t i;
        PyObject *found;
        for (i = 0; i < PyTuple_GET_SIZE(names); i++) {   /* names is a tuple */
            found = _PyType_Lookup((PyTypeObject *)cls, PyTuple_GET_ITEM(names, i));
            if (found != NULL && Py_TYPE(found)->tp_descr_set != NULL)
                return 0;
        }
        return 1;
    #else
        return 0;
    #endif
    }

    /* Py_EnterRecursiveCall, -1 (RecursionError set) rather than nonzero for Cython. */
    static int
    mm_enter_recursive_call(const char *where)
    {
        return Py_EnterRecursiveCall(where) ? -1 : 0;
    }

    static int
    mm_set_class_vectorcall(PyObject *cls, PyObject *new_name)
    {
        PyTypeObject *type = (PyTypeObject *)cls;
        if (type->tp_vectorcall == mm_class_vectorcall)
            return 0;
        /* Not a static type (shared, with its own call), nor one with a vectorcall already */
        if (!PyType_HasFeature(type, Py_TPFLAGS_HEAPTYPE) || type->tp_vectorcall != NULL)
            return -1;
        if (mm_new_name == NULL) {
            Py_INCREF(new_name);
            mm_new_name = new_name;
        }
        type->tp_vectorcall = mm_class_vectorcall;
        return 0;
    }

    /* The engine's open, called as mmarray.open is called most: open(file), open(file,
       dtype), open(file, dtype, mode), dtype and mode given by position or keyword. Those
       go to the engine's _open_plain (the other parameters at their defaults), then (if it
       gives None) to its _open_general; any other call to the function's own vectorcall,
       which parses the whole signature (Cython's: ~210 instructions, against ~50 here).
       Installed in the function's vectorcall slot, found as CPython finds it
       (tp_vectorcall_offset: docs.python.org/3/c-api/typeobj.html). */
    typedef PyObject *(*mm_open_fn)(PyObject *, PyObject *, PyObject *);
    static mm_open_fn mm_open_plain = NULL;
    static mm_open_fn mm_open_general = NULL;
    static vectorcallfunc mm_open_full = NULL;      /* the function's own vectorcall */
    static PyObject *mm_open_defaults[2];           /* open's defaults of dtype and mode */
    static PyObject *mm_open_dtype_name = NULL, *mm_open_mode_name = NULL;

    static PyObject *
    mm_open_vectorcall(PyObject *func, PyObject *const *args, size_t nargsf, PyObject *kwnames)
    {
        PyObject *file, *dtype = NULL, *mode = NULL, *name, *result;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), i;
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        if (nargs < 1 || nargs + nkw > 3)
            return mm_open_full(func, args, nargsf, kwnames);
        file = args[0];                         /* nargs >= 1 */
        if (nargs > 1)
            dtype = args[1];
        if (nargs > 2)
            mode = args[2];
        for (i = 0; i < nkw; i++) {             /* the values follow the nargs positionals */
            /* by identity: compiled code passes the interned names; any other spelling of
               them goes to the full parse, which matches by value */
            name = PyTuple_GET_ITEM(kwnames, i);
            if (name == mm_open_dtype_name && dtype == NULL)
                dtype = args[nargs + i];
            else if (name == mm_open_mode_name && mode == NULL)
                mode = args[nargs + i];
            else                                /* another keyword, or a value given twice */
                return mm_open_full(func, args, nargsf, kwnames);
        }
        if (dtype == NULL)
            dtype = mm_open_defaults[0];
        if (mode == NULL)
            mode = mm_open_defaults[1];
        result = mm_open_plain(file, dtype, mode);
        if (result != Py_None)
            return result;
        Py_DECREF(result);
        return mm_open_general(file, dtype, mode);
    }

    /* 0 once func's calls go through mm_open_vectorcall (or already did), -1 for a callable
       without a vectorcall slot. */
    static int
    mm_set_open_vectorcall(PyObject *func, mm_open_fn plain, mm_open_fn general,
                           PyObject *dtype, PyObject *mode, PyObject *dtype_name,
                           PyObject *mode_name)
    {
        PyTypeObject *type = Py_TYPE(func);
        vectorcallfunc *slot;
        if (!PyType_HasFeature(type, Py_TPFLAGS_HAVE_VECTORCALL) || type->tp_vectorcall_offset <= 0)
            return -1;
        /* the offset CPython itself reads the slot at: inside the object */
        slot = (vectorcallfunc *)((char *)func + type->tp_vectorcall_offset);
        if (*slot == mm_open_vectorcall)
            return 0;
        if (*slot == NULL)
            return -1;
        Py_INCREF(dtype);                       /* all kept for the process's lifetime */
        Py_INCREF(mode);
        Py_INCREF(dtype_name);
        Py_INCREF(mode_name);
        mm_open_defaults[0] = dtype;
        mm_open_defaults[1] = mode;
        mm_open_dtype_name = dtype_name;
        mm_open_mode_name = mode_name;
        mm_open_plain = plain;
        mm_open_general = general;
        mm_open_full = *slot;
        *slot = mm_open_vectorcall;
        return 0;
    }

    /* mmarray.open as a built-in function: a PyCFunction of METH_FASTCALL | METH_KEYWORDS
       whose calls are those of the engine's open (mm_open_vectorcall). The interpreter calls
       the C function of such an object straight from the call site (CPython 3.11's
       PRECALL_BUILTIN_FAST_WITH_KEYWORDS, 3.12's CALL_BUILTIN_FAST_WITH_KEYWORDS: Python/
       specialize.c specializes only exact PyCFunction objects), where a call of a Cython
       function takes the generic path (PyObject_Vectorcall). Made once, after
       mm_set_open_vectorcall; the doc (a bytes object, kept for the process's lifetime) is
       the function's: "open(<text signature>)\n--\n\n<docstring>", as
       docs.python.org/3/c-api/structures.html (PyMethodDef, __text_signature__) and
       inspect.signature read it. */
    static PyMethodDef mm_open_def = {"open", NULL, METH_FASTCALL | METH_KEYWORDS, NULL};
    static PyObject *mm_open_func = NULL;           /* the engine's open */
    static PyObject *mm_open_builtin = NULL;

    static PyObject *
    mm_open_fastcall(PyObject *unused, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
    {
        return mm_open_vectorcall(mm_open_func, args, (size_t)nargs, kwnames);
    }

    /* The built-in function (a new reference), None while func's calls do not go through
       mm_open_vectorcall (nothing to make it of); the one made first on later calls. */
    static PyObject *
    mm_make_open_builtin(PyObject *func, PyObject *doc, PyObject *module_name)
    {
        static int making = 0;
        vectorcallfunc *slot;
        if (mm_open_builtin == NULL) {
            /* making: called again while PyCFunction_NewEx collected (a finalizer): None */
            if (making || mm_open_full == NULL || !PyBytes_CheckExact(doc))
                Py_RETURN_NONE;
            /* installed by mm_set_open_vectorcall, which checked the offset */
            slot = (vectorcallfunc *)((char *)func + Py_TYPE(func)->tp_vectorcall_offset);
            if (*slot != mm_open_vectorcall)
                Py_RETURN_NONE;
            Py_INCREF(func);                        /* both kept for the process's lifetime */
            Py_INCREF(doc);
            mm_open_func = func;
            mm_open_def.ml_meth = (PyCFunction)(void (*)(void))mm_open_fastcall;
            mm_open_def.ml_doc = PyBytes_AS_STRING(doc);
            making = 1;
            mm_open_builtin = PyCFunction_NewEx(&mm_open_def, NULL, module_name);
            making = 0;
            if (mm_open_builtin == NULL)
                return NULL;
        }
        Py_INCREF(mm_open_builtin);
        return mm_open_builtin;
    }

    /* close of a class of Region's as a method descriptor of that class (METH_FASTCALL |
       METH_KEYWORDS), for the same reason: CPython 3.11's
       PRECALL_METHOD_DESCRIPTOR_FAST_WITH_KEYWORDS (3.12: CALL_METHOD_DESCRIPTOR_FAST_WITH_
       KEYWORDS) calls the C function of a method descriptor straight from the call site when
       the object is exactly of the descriptor's class. close() goes to mm_close_plain; a
       call with arguments to Region.close (mm_close_full) with the object first. The
       descriptor checks the object's class before any call (Objects/descrobject.c,
       descr_check; the specialized call checks the exact class). */
    static PyObject *mm_close_full = NULL;          /* Region.close */
    static int (*mm_close_plain)(PyObject *) = NULL;

    static PyObject *
    mm_close_fastcall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
    {
        PyObject *small[4], **stack = small, *result;
        Py_ssize_t n = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames)), i;
        if (n == 0) {
            if (mm_close_plain(self) < 0)
                return NULL;
            Py_RETURN_NONE;
        }
        if (n >= 4) {                               /* too many: Region.close says so */
            stack = PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
            if (stack == NULL)
                return PyErr_NoMemory();
        }
        stack[0] = self;
        for (i = 0; i < n; i++)                     /* n + 1 slots: i + 1 <= n */
            stack[i + 1] = args[i];
        result = PyObject_Vectorcall(mm_close_full, stack, (size_t)(nargs + 1), kwnames);
        if (stack != small)
            PyMem_Free(stack);
        return result;
    }

    /* 0 once cls.close is that descriptor, -1 with an error set. Each call makes a new one,
       with its own PyMethodDef and doc, kept for the process's lifetime (a descriptor only
       points at its PyMethodDef). */
    static int
    mm_set_close_method(PyObject *cls, PyObject *full, int (*plain)(PyObject *),
                        PyObject *doc)
    {
        PyMethodDef *def;
        PyObject *descr;
        int status;
        def = PyMem_RawCalloc(1, sizeof(PyMethodDef));
        if (def == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (mm_close_full == NULL) {
            Py_INCREF(full);                        /* kept for the process's lifetime */
            mm_close_full = full;
            mm_close_plain = plain;
        }
        Py_INCREF(doc);                             /* the def's doc: kept with it */
        def->ml_name = "close";
        def->ml_meth = (PyCFunction)(void (*)(void))mm_close_fastcall;
        def->ml_flags = METH_FASTCALL | METH_KEYWORDS;
        def->ml_doc = PyBytes_AS_STRING(doc);
        descr = PyDescr_NewMethod((PyTypeObject *)cls, def);
        if (descr == NULL)
            return -1;
        status = PyObject_SetAttrString(cls, "close", descr);
        Py_DECREF(descr);
        return status;
    }

    /* The deallocation of a class made by a class statement whose instances have Region's
       layout (no slot, __dict__ or __weakref__ of its own): what CPython's subtype_dealloc
       does for it, without its generic steps -- the trashcan (a chain of regions freeing
       each other through their fields is freed iteratively, not by C recursion), the
       finalizer (__del__, if one was set on the class), then Region's dealloc (untrack,
       __dealloc__, clear the fields and weak references, free), then the reference to the
       class that every instance of a heap type holds
       (docs.python.org/3/c-api/typeobj.html#c.PyTypeObject.tp_dealloc: "the instance's type
       must be decref'd"), read after the finalizer, which may have assigned __class__ (to a
       class of the same layout: nothing else to clear). A subclass of such a class keeps
       subtype_dealloc, which calls this one as its base's and leaves the class's reference
       to it (3.8 on: a base dealloc of a heap type decrefs). Helper-72 found both the
       recursion and the class read too early. */
    static destructor mm_region_dealloc = NULL;        /* Region's tp_dealloc */

    static void
    mm_region_subclass_dealloc(PyObject *self)
    {
        PyTypeObject *type;
        PyObject_GC_UnTrack(self);                   /* the trashcan keeps it untracked */
        Py_TRASHCAN_BEGIN(self, mm_region_subclass_dealloc)
        if (Py_TYPE(self)->tp_finalize != NULL) {
            PyObject_GC_Track(self);                 /* as subtype_dealloc runs it */
            if (PyObject_CallFinalizerFromDealloc(self) < 0)
                goto done;                           /* resurrected by its finalizer */
            PyObject_GC_UnTrack(self);
        }
        type = Py_TYPE(self);
        PyObject_GC_Track(self);                     /* Region's dealloc untracks it */
        mm_region_dealloc(self);
        Py_DECREF(type);
    done:
        Py_TRASHCAN_END
    }

    /* 0 once cls's instances are deallocated by mm_region_subclass_dealloc, -1 (nothing
       changed) for a class that is not a heap subclass of region with region's layout whose
       instances subtype_dealloc deallocates (`plain`: a class made by a class statement). */
    static int
    mm_set_region_dealloc(PyObject *cls, PyObject *region, PyObject *plain)
    {
        PyTypeObject *type = (PyTypeObject *)cls, *base = (PyTypeObject *)region;
    #if CYTHON_USE_TYPE_SPECS
        return -1;   /* Region's own dealloc decrefs the type there */
    #endif
        if (type->tp_dealloc == mm_region_subclass_dealloc)
            return 0;
        if (type == base || !PyType_HasFeature(type, Py_TPFLAGS_HEAPTYPE)
                || !PyType_IsSubtype(type, base)
                || type->tp_dealloc != ((PyTypeObject *)plain)->tp_dealloc
                || type->tp_basicsize != base->tp_basicsize || type->tp_itemsize != 0
                || type->tp_dictoffset != base->tp_dictoffset
                || type->tp_weaklistoffset != base->tp_weaklistoffset)
            return -1;
        mm_region_dealloc = base->tp_dealloc;
        type->tp_dealloc = mm_region_subclass_dealloc;
        return 0;
    }
    """
    int mm_set_region_dealloc(type cls, type region, type plain)
    object mm_make_open_builtin(object func, bytes doc, str module_name)
    ctypedef int (*mm_close_fn)(object) except -1
    int mm_set_close_method(object cls, object full, mm_close_fn plain, bytes doc) except -1
    ctypedef object (*mm_open_fn)(object, object, object)
    int mm_set_open_vectorcall(object func, mm_open_fn plain, mm_open_fn general, object dtype,
                               object mode, object dtype_name, object mode_name)
    int mm_set_class_vectorcall(object cls, object new_name)
    int mm_enter_recursive_call(const char *where) except -1
    int mm_gc_pause()
    bint mm_names_stored_plainly(object cls, tuple names)
    void mm_gc_resume(int was_running)


cdef object _ndarray = _np.ndarray
cdef tuple _EMPTY_TUPLE = ()
# A valid address for empty mappings: buffers must not carry NULL (an empty region has no view).
cdef char _empty_byte = 0

# The registry of what this process maps, guarded by the GIL: every read-modify-write of it
# below is C code that calls nothing able to release the GIL (operations on a C table, and
# dict operations on tuples of ints; each key tuple is built before the read, so a garbage
# collection that its allocation triggers -- and the __dealloc__ it may run -- comes before,
# not inside, the update). No lock means nothing for a fork() to inherit held and nothing for
# a signal handler or a finalizer to deadlock on; no blocking call (open, fallocate,
# populate) is ever made while the registry is inconsistent.
#
# The live files: (st_dev, st_ino) -> number of live views, a C hash table (_live_count,
#   _live_add): no Python object is made or hashed per map and unmap, and nothing it does
#   can run a collection. What lets mode 'w+' refuse to truncate a file whose mapped pages
#   would then fault (SIGBUS) on the next access.
# _truncating / _truncated_at: files a 'w+' is resetting now, and the epoch at which the last
#   reset of each ended. A map that raced a reset (it began before the reset ended, so its
#   view may be longer than the file now) sees it when it registers, and maps again. The
#   check and the registration are one step (_register_unless_reset): nothing between them
#   can run a collection, a finalizer or another thread.
cdef struct _LiveFile:
    uint64_t dev
    uint64_t ino
    Py_ssize_t count             # live views; 0 marks an empty slot

cdef _LiveFile *_live_table = NULL
cdef size_t _live_mask = 0       # capacity - 1 (a power of two), 0 before the first entry
cdef size_t _live_used = 0


cdef inline size_t _live_slot(uint64_t dev, uint64_t ino) noexcept:
    cdef uint64_t h = (ino ^ (dev * <uint64_t>0x9E3779B97F4A7C15)) * <uint64_t>0xBF58476D1CE4E5B9
    return <size_t>(h ^ (h >> 31))


cdef Py_ssize_t _live_count(uint64_t dev, uint64_t ino) noexcept:
    """Live views of file (dev, ino)."""
    cdef size_t i
    if _live_table == NULL:
        return 0
    i = _live_slot(dev, ino) & _live_mask
    while _live_table[i].count:
        if _live_table[i].ino == ino and _live_table[i].dev == dev:
            return _live_table[i].count
        i = (i + 1) & _live_mask
    return 0


cdef int _live_grow() except -1:
    global _live_table, _live_mask
    cdef size_t cap = 2 * (_live_mask + 1) if _live_table != NULL else 64
    cdef _LiveFile *old = _live_table
    cdef size_t old_cap = _live_mask + 1 if old != NULL else 0
    cdef _LiveFile *table = <_LiveFile *>calloc(cap, sizeof(_LiveFile))
    cdef size_t i, j
    if table == NULL:
        raise MemoryError()
    for i in range(old_cap):
        if old[i].count:
            j = _live_slot(old[i].dev, old[i].ino) & (cap - 1)
            while table[j].count:
                j = (j + 1) & (cap - 1)
            table[j] = old[i]
    _live_table = table
    _live_mask = cap - 1
    free(old)
    return 0


cdef int _live_add(uint64_t dev, uint64_t ino, Py_ssize_t delta) except -1:
    """Count ``delta`` more (or fewer) live views of file (dev, ino); an entry that reaches 0
    goes. Allocates (malloc, never a Python object) only to grow, for a new entry."""
    global _live_used
    cdef size_t i, j, k
    if delta > 0 and (_live_table == NULL or 2 * (_live_used + 1) > _live_mask + 1):
        _live_grow()
    if _live_table == NULL:
        return 0
    i = _live_slot(dev, ino) & _live_mask
    while _live_table[i].count:
        if _live_table[i].ino == ino and _live_table[i].dev == dev:
            break
        i = (i + 1) & _live_mask
    else:
        if delta <= 0:
            return 0                 # not counted: nothing to take away
        _live_table[i].dev = dev
        _live_table[i].ino = ino
        _live_table[i].count = delta
        _live_used += 1
        return 0
    _live_table[i].count += delta
    if _live_table[i].count > 0:
        return 0
    # Remove slot i, moving later entries of its probe run back (linear probing's deletion).
    _live_table[i].count = 0
    _live_used -= 1
    j = i
    while True:
        j = (j + 1) & _live_mask
        if not _live_table[j].count:
            return 0
        k = _live_slot(_live_table[j].dev, _live_table[j].ino) & _live_mask
        # The entry at j may move to i unless its home k lies cyclically in (i, j].
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            _live_table[i] = _live_table[j]
            _live_table[j].count = 0
            i = j

cdef dict _truncating = {}
cdef dict _truncated_at = {}
cdef unsigned long long _epoch = 0
cdef Py_ssize_t _in_flight = 0      # maps between their start and their registration
cdef dict _rebasing = {}            # placeholder _Retired -> Region: rebases in their commit
cdef dict _busy_regions = {}        # id -> Region with an operation running without the GIL
cdef object _live_pins = _weakref.WeakValueDictionary()  # id -> _Pin not released yet
cdef Py_ssize_t _fork_generation = 0  # forks survived: busy exports of an older one are gone

# The fault guard (csrc/mm.h): views are guarded as they are mapped while _guard_enabled.
cdef bint _guard_enabled = True
cdef bint _guard_installed = False
cdef uint64_t _guard_next = 0
cdef object _guard_hook = None

# How long a populate-ahead loop waits for a consumer that does not move before it gives up
# (populating is only a head start: the consumer faults in what is left itself).
cdef uint64_t _POPULATE_IDLE_LIMIT_US = 10 * 1000 * 1000
cdef int _MAP_ATTEMPTS = 5
_FD_MAX = 2**31 - 1  # open(2) returns a C int
_HANDLE_MAX = 2**63 - 1 if sizeof(mm_handle) == 8 else 2**31 - 1  # a HANDLE: pointer-sized
_MAX_DIMS = 64
_INTP_MAX = int(_np.iinfo(_np.intp).max)
_INT64_MAX = 2**63 - 1
# A dimension in 0..PY_SSIZE_T_MAX is one numpy takes (_shape_nbytes_c relies on it).
cdef bint _intp_is_ssize = _INTP_MAX == PY_SSIZE_T_MAX
cdef int _NPY_ITEM_HASOBJECT = 0x01  # numpy's NPY_ITEM_HASOBJECT: what dtype.hasobject reads
_O_OPEN = (_os.O_RDWR | getattr(_os, "O_CLOEXEC", 0) | getattr(_os, "O_NONBLOCK", 0)
           | getattr(_os, "O_BINARY", 0))
if _os.name == "nt":  # pragma: no cover - Windows: the C layer takes a HANDLE
    import msvcrt as _msvcrt
    _os_handle = _msvcrt.get_osfhandle
else:
    def _os_handle(fd):
        return fd

# The C layer's constants, exported so that the Python modules name them without mirroring
# csrc/mm.h by hand.
ALIGNMENT = mm_alignment()
PAGE_SIZE = mm_page_size()
TO_END = MM_TO_END
READ = MM_READ
WRITE = MM_WRITE
COPY = MM_COPY
CREATE = MM_CREATE
GROW = MM_GROW
POPULATE = MM_POPULATE
TRUNCATE = MM_TRUNCATE
#: mm_status: name -> value (MM_OK is 0; E_* are errors).
STATUS = {"OK": MM_OK, "E_ARG": MM_E_ARG, "E_OPEN": MM_E_OPEN, "E_STAT": MM_E_STAT,
          "E_RANGE": MM_E_RANGE, "E_GROW": MM_E_GROW, "E_MAP": MM_E_MAP,
          "E_FLUSH": MM_E_FLUSH, "E_UNMAP": MM_E_UNMAP, "E_ADVISE": MM_E_ADVISE,
          "E_QUERY": MM_E_QUERY, "E_EMPTY": MM_E_EMPTY, "E_FAULT": MM_E_FAULT}
#: mm_advice: advice name (as Mapping.advise takes it) -> value.
ADVICE = {"normal": MM_ADV_NORMAL, "sequential": MM_ADV_SEQUENTIAL, "random": MM_ADV_RANDOM,
          "willneed": MM_ADV_WILLNEED, "dontneed": MM_ADV_DONTNEED,
          "hugepage": MM_ADV_HUGEPAGE, "nohugepage": MM_ADV_NOHUGEPAGE,
          "populate_read": MM_ADV_POPULATE_READ, "populate_write": MM_ADV_POPULATE_WRITE}


class _Plain:
    """A class made by a class statement: its deallocator is CPython's subtype_dealloc."""


def set_region_dealloc(cls):
    """Deallocate the instances of ``cls``, a class made by a class statement that subclasses
    Region and adds no slot, ``__dict__`` or ``__weakref__``, by Region's deallocator (with
    its finalizer, if any, before and the class's reference after) rather than CPython's
    generic one for such classes (~130 instructions fewer per object). TypeError for another
    class."""
    if not isinstance(cls, type) or mm_set_region_dealloc(<type>cls, Region, _Plain) < 0:
        raise TypeError(f"expected a class made by a class statement with Region's layout, "
                        f"got {cls!r}")


def set_class_vectorcall(type cls not None):
    """Make calls of ``cls`` itself (not of its subclasses) call ``cls.__new__`` with the
    arguments as they come, as ``type.__call__`` does without the tuple and keyword dict it
    builds for them (an ``__init__`` other than object's is still called, as there). For a
    class made by a class statement whose calls are not vectorcalls yet; TypeError for
    another (a built-in or C type)."""
    if mm_set_class_vectorcall(cls, "__new__") < 0:
        raise TypeError(f"expected a class made by a class statement, got {cls!r}")


#: ndarray subclass -> the __array_finalize__ the Python layer vouches for in it (see
#: trust_array_finalize): _new_array builds them without ndarray.__new__ while they have it.
cdef dict _trusted_finalize = {}


def trust_array_finalize(subtype):
    """Let arrays of exactly ``subtype`` (an ndarray subclass) be built by the fast constructor,
    which gives an array its base only once ``subtype.__array_finalize__`` has returned, for
    as long as that attribute is the function it is now. Only for a function that, when it
    raises, keeps no reference to the array it was given (such an array would have no base,
    and read its region once unmapped), and that sets no attribute of an array made from
    nothing (``obj`` None): :func:`array_to_end` gives such an array a new dictionary.

    Returns whether the function is trusted: only a function compiled by the Cython that
    compiled this module is. A Python function's frame is seen by sys.setprofile and
    sys.settrace hooks and runs signal handlers, any of which could keep the array."""
    if not (isinstance(subtype, type) and issubclass(subtype, _ndarray)):
        raise TypeError(f"subtype must be a subclass of numpy.ndarray, got {subtype!r}")
    finalize = subtype.__array_finalize__
    if type(finalize) is not type(trust_array_finalize):
        return False
    _trusted_finalize[subtype] = finalize
    return True


cdef object _new_array(Region m, type subtype, object export, bint *trusted=NULL):
    """An array of ``subtype`` over the mapped region, based on ``export`` (which holds the
    export for the array's lifetime). The C API call that ``ndarray.__new__(buffer=...)``
    ends in, without parsing its arguments (measured: ~0.4 us less per array), for ndarray
    and the subclasses trust_array_finalize names; ``*trusted`` (if given) tells which was
    made: True if the only ``__array_finalize__`` that ran was the trusted one, if any."""
    cdef cnp.dtype descr = m._dtype
    cdef int collector
    if m._shape is None and m._length1 < 0:
        raise ValueError("the mapping has no shape (its size is not a multiple of the "
                         "itemsize)")
    if trusted != NULL:
        trusted[0] = False
    if subtype is _ndarray:
        array = _new_trusted_array(m, subtype, descr, export)
    else:
        # numpy looks __array_finalize__ up itself, after allocating the array: the collector
        # stays paused from this check to the end of the call, so that no finalizer (or
        # gc.callbacks function) can replace the function in between.
        collector = mm_gc_pause()
        if collector < 0 or not _finalize_trusted(subtype):
            mm_gc_resume(collector)
            # Another subclass's __array_finalize__ (or a trusted class's, replaced since) may
            # keep the new array (append it to a list) and then raise: that array must
            # already hold its base, as ndarray.__new__ gives it before the call. The export
            # refuses a writable buffer of a read-only mapping, and numpy then makes the
            # array read-only.
            return _ndarray.__new__(subtype, m._shape_of(), descr, export, 0, None,
                                    m._order)
        try:
            array = _new_trusted_array(m, subtype, descr, export)
        finally:
            mm_gc_resume(collector)
    if trusted != NULL:
        trusted[0] = True
    return array


cdef object _new_plain_array(Region m):
    # m.array: _new_array(m, ndarray, _new_export(m)), in one step for the mapping of a fast
    # open (a 1-D shape kept as _length1: no tuple to read).
    cdef cnp.npy_intp dims[1]
    cdef cnp.dtype descr
    if m._shape is not None or m._length1 < 0:
        return _new_array(m, _ndarray, _new_export(m))
    export = _new_export(m)          # counted first: making the array may run the collector
    descr = m._dtype
    dims[0] = m._length1
    Py_INCREF(descr)                 # PyArray_NewFromDescr steals it
    # data is the mapping's first byte; _length1 items of the dtype are its mapped length.
    array = PyArray_NewFromDescr(_ndarray, descr, 1, dims, NULL, m.view.data,
                                 0 if m._readonly else cnp.NPY_ARRAY_WRITEABLE, None)
    cnp.set_array_base(array, export)
    return array


cdef bint _finalize_trusted(type subtype) except -1:
    # The class's __array_finalize__ is the one trust_array_finalize was given for it. Only
    # for a class whose metaclass is type: getattr then finds the attribute in the class's
    # MRO, as numpy's lookup will, and no metaclass property or __eq__ can answer otherwise.
    if type(subtype) is not type:
        return False
    trusted = _trusted_finalize.get(subtype)
    return trusted is not None and trusted is getattr(subtype, "__array_finalize__", None)


cdef object _new_trusted_array(Region m, type subtype, cnp.dtype descr, object export):
    # _new_array's constructor, for ndarray and a class _finalize_trusted vouches for.
    cdef cnp.npy_intp dims[64]     # NPY_MAXDIMS in numpy 2; numpy 1.x allows 32
    cdef int nd, i, flags = 0
    cdef tuple shape = m._shape
    if shape is None:                # (m._length1,): _new_array checked there is a shape
        nd = 1
        dims[0] = m._length1
    else:
        nd = len(shape)
        if nd > 64:
            raise ValueError(f"shape {shape!r} has more than 64 dimensions")
        for i in range(nd):
            dims[i] = shape[i]
    if not m._readonly:
        flags |= cnp.NPY_ARRAY_WRITEABLE
    if m._order == "F":
        flags |= cnp.NPY_ARRAY_F_CONTIGUOUS
    Py_INCREF(descr)               # PyArray_NewFromDescr steals it
    # data is the mapping's first byte; the shape was checked against the mapped length.
    array = PyArray_NewFromDescr(subtype, descr, nd, dims, NULL, m.view.data, flags, None)
    cnp.set_array_base(array, export)
    return array


#: Refusals the engine makes itself, reported through the error factory as negative statuses
#: beside the C layer's: a reset ('w+') of a file this process maps (code: the live views), of
#: a file another thread is resetting, and a map that kept racing resets.
REFUSED_MAPPED = -1
REFUSED_RESETTING = -2
RACED_RESETS = -3


def _default_error(status, code, file_size, filename, offset, length):
    if code > 0:
        return OSError(code, f"mapping layer status {status}: {_os.strerror(code)}", filename)
    return OSError(f"mapping layer status {status} for {filename!r}")


# Turns (status, code, file size, file name, offset, length) into the exception to raise.
# The Python layer installs its own (mmarray._errors.from_status): the engine imports no
# module of the package, so the policy of naming errors is handed to it, not fetched.
cdef object _error_factory = _default_error


def set_error_factory(factory):
    """Install the callable that builds the exceptions the engine raises."""
    global _error_factory
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    _error_factory = factory


cdef object _made_error(int status, int64_t code, uint64_t file_size, object filename,
                        uint64_t offset, uint64_t length):
    exc = _error_factory(status, code, file_size, filename, offset, length)
    if not isinstance(exc, BaseException):  # a broken factory must not hide the error
        exc = _default_error(status, code, file_size, filename, offset, length)
    return exc


cdef int _raise(const mm_error *err, object filename, uint64_t offset, uint64_t length) except -1:
    raise _made_error(err.status, err.code, err.file_size, filename, offset, length)


cdef int _refuse(int status, Py_ssize_t code, object filename) except -1:
    raise _made_error(status, code, 0, filename, 0, 0)


@cython.auto_pickle(False)
cdef class Region:
    """The engine's mapped region: a byte range of a file, its exports and its lifetime.

    The base of :class:`mmarray.Mapping` (``mmarray/_mapping.py``), which adds the policy:
    row ranges, advice names, modes, prefetching and scans. This type holds none: it maps,
    counts the buffers it hands out, and unmaps once closed and no longer used.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Mapping objects are made by mmarray.open() or mmarray.load(), "
                        "not directly")

    def __cinit__(self):
        memset(&self.view, 0, sizeof(mm_view))
        self._exports = 0
        self._closed = True          # a bare Mapping (not made by map_file) maps nothing
        self._readonly = True
        self._length1 = -1           # no shape (see _shape_of)

    def __dealloc__(self):
        # No export can be alive here (each holds a reference to self). Also runs for
        # Mappings freed by the cycle collector (their object fields already cleared) and at
        # interpreter exit: it touches only C fields and the registry, and prints nothing.
        cdef mm_error err
        _unguard(self)               # first: nothing may find this Region through the guard
        if self._registered:
            _unregister(self)
        if self.view.data != NULL and self.view.data != &_empty_byte:
            with nogil:
                mm_unmap(&self.view, &err)

    # -- lifetime ---------------------------------------------------------------------------

    @cython.final
    cdef int _acquire(self) except -1:
        if self._closed:
            raise ValueError("mapping is closed")
        self._exports += 1
        return 0

    @cython.final
    cdef bint _resized_elsewhere(self):
        # A resize runs in another thread of this process (not a stale mark from before a
        # fork: the thread that ran it is not in the child).
        return self._resize_depth != 0 and self._resize_fork == _fork_generation \
            and self._resizer != PyThread_get_thread_ident()

    @cython.final
    cdef int _refuse_while_resized(self) except -1:
        # What would use the region without the GIL, pin its view or hand out a raw pointer
        # waits for no resize: it is refused while one runs in another thread, whose swap of
        # the view it could otherwise race (the resize releases the GIL on the way: fstat,
        # writes, fsync).
        if self._resized_elsewhere():
            raise BufferError("another thread is resizing this mapping: retry once the "
                              "resize is done")
        return 0

    @cython.final
    cdef int _release(self) except -1:
        self._exports -= 1
        if self._exports == 0 and self._closed:
            self._unmap_now()
        return 0

    @cython.final
    cdef int _release_export(self, Py_ssize_t generation) except -1:
        # An array made before a resize releases the view it was made on.
        cdef _Retired retired
        if generation == self._generation:
            return self._release()
        for retired in self._retired or ():
            if retired.generation == generation:
                retired.exports -= 1
                if retired.exports == 0:
                    self._retired.remove(retired)
                    # Its faults stay this mapping's (faulted, close()) once its slot goes.
                    self._faults_at_unmap += mm_guard_faults(&retired.view)
                    retired._unmap()
                return 0
        return 0

    def _check_movable(self):
        """Raise what _resize and _rebase would refuse for now (closed, an operation running
        without the GIL, a raw buffer exported), before a caller writes anything to the
        file."""
        if self._closed:
            raise ValueError("mapping is closed")
        if self._resized_elsewhere():
            raise BufferError("another thread is resizing this mapping: resize once it is "
                              "done")
        if self._busy or self._pins:
            raise BufferError("an operation (flush, prefetch, chunks) is using the mapping: "
                              "resize once it is done")
        if self._raw_exported:
            raise BufferError("the Mapping was used as a plain-bytes buffer, whose users it "
                              "cannot count: it cannot be resized or moved to another file")

    def _begin_resize(self):
        """Mark a resize as running in this thread, until :meth:`_end_resize` (call both,
        the second in a ``finally``). Meanwhile other threads' operations that run without
        the GIL, pins, raw buffers and resizes are refused (BufferError), so the checks a
        resize makes before it writes the file still hold when it moves the view. The same
        thread may nest (NpyMapping.resize calls Mapping.resize). Raises what
        :meth:`_check_movable` raises, and BufferError while another thread resizes."""
        if self._resized_elsewhere():
            raise BufferError("another thread is resizing this mapping: resize once it is "
                              "done")
        if self._resize_depth == 0 or self._resize_fork != _fork_generation:
            self._check_movable()
            self._resize_depth = 0
        self._resizer = PyThread_get_thread_ident()
        self._resize_fork = _fork_generation
        self._resize_depth += 1

    def _end_resize(self):
        """End the mark :meth:`_begin_resize` set (a no-op for another thread or none)."""
        if self._resize_depth and self._resizer == PyThread_get_thread_ident():
            self._resize_depth -= 1
            if self._resize_depth == 0:
                self._resizer = 0

    def _own_views(self, st_dev, st_ino):
        """How many of the live views of file (st_dev, st_ino) that ``live_views`` counts
        are this mapping's: its view and the retired ones kept for arrays made before a
        resize."""
        cdef _Retired retired
        n = 1 if (self._registered and (self._file_dev, self._file_ino) == (st_dev, st_ino)) \
            else 0
        for retired in self._retired or ():
            if retired.view.data != NULL and (retired.file_dev, retired.file_ino) == \
                    (st_dev, st_ino):
                n += 1
        return n

    def _rebase(self, int fd, uint64_t offset, tuple shape, commit=None, bytes name=None):
        """Map the same array from another file: ``fd``, a copy of this mapping's file that
        the caller has just written (NpyMapping.resize, to give a header room). Arrays made
        before keep the old file's view, mapped until they are gone; the registry and the
        guard follow the new file.

        ``commit``, when given, is called once the new view is mapped: the step that puts
        the copy at the old file's name, ``name`` (``functools.partial(os.replace, tmp,
        name)``). If it raises, nothing has changed (the new view is unmapped) and its
        exception propagates. Once it returns, the move completes without running any
        bytecode: an asynchronous exception (KeyboardInterrupt, the fault guard's) cannot
        land between the rename and the move and leave the mapping on the unlinked old file,
        where later writes were lost. So ``commit`` must be a builtin, not a Python
        function, and everything here that can fail runs before it.

        A rename releases the GIL: another thread may close the mapping meanwhile (the move
        is then undone and ValueError raised), or fork. A child forked then has no thread to
        finish the move: its fork handler finishes it if ``name`` leads to the copy by then,
        and undoes it otherwise (_reset_after_fork)."""
        cdef mm_error err
        cdef int status
        cdef mm_view fresh, old
        cdef uint64_t length
        cdef _Retired retired
        self._check_movable()        # closed, busy, pinned, raw buffer, another resize
        if self._readonly or self.view.access != MM_WRITE:
            raise ValueError("only a writable (mode 'r+' or 'w+') mapping moves to another "
                             "file")
        shape, nbytes = _shape_nbytes(shape, self._dtype.itemsize)
        length = nbytes
        if length == 0 or self.view.data == NULL or self.view.data == &_empty_byte:
            raise ValueError("only a mapping of at least one byte moves to another file")
        # With the GIL held (but for ``commit``, see above): another thread's close(),
        # resize() or array must not see the view while it changes.
        status = mm_map_handle(fd, MM_WRITE, offset, length, 0, &fresh, &err)
        if status != MM_OK:
            _raise(&err, self._filename, offset, length)
        old = self.view
        retired = None
        counted = 0
        try:
            # What can fail (allocations) is done now: an inert placeholder in the list of
            # retired views (no view, a generation no export has), filled in if arrays made
            # on the old view are alive once ``commit`` has run; the new file's count, and
            # one more for the old file's, for that retired view (taken back if unused).
            retired = _Retired.__new__(_Retired)
            retired.generation = -1
            if self._retired is None:
                self._retired = []
            self._retired.append(retired)
            _live_add(fresh.file_id[0], fresh.file_id[1], 1)
            counted = 1
            _live_add(old.file_id[0], old.file_id[1], 1)
            counted = 2
            # What a forked child needs to finish or undo the move (_reset_after_fork).
            retired.pending = fresh
            retired.file_dev = old.file_id[0]    # what the second count was taken for
            retired.file_ino = old.file_id[1]
            retired.pending_offset = offset
            retired.pending_shape = shape
            retired.pending_name = name
            retired.rebaser = PyThread_get_thread_ident()
            _rebasing[retired] = self
        except BaseException:
            self._drop_placeholder(retired)
            if counted:
                _count_view_gone(fresh.file_id[0], fresh.file_id[1])
            if counted == 2:
                _count_view_gone(old.file_id[0], old.file_id[1])
            mm_unmap(&fresh, &err)
            raise
        if commit is not None:
            try:
                commit()             # a rename releases the GIL: other threads run meanwhile
            except BaseException:
                self._undo_rebase(&fresh, retired)
                raise
        if self._closed or self.view.data != old.data or self.view.length != old.length:
            # Closed by another thread while ``commit`` ran: it unmapped (or keeps for its
            # arrays) the old view; the copy is at the name all the same.
            self._undo_rebase(&fresh, retired)
            raise ValueError("mapping is closed")
        self._finish_rebase(&fresh, retired)

    @cython.final
    cdef void _finish_rebase(self, mm_view *fresh, _Retired retired) noexcept:
        # The move, once ``commit`` has run: nothing here fails, allocates or runs Python
        # code (but the guard's first install, which _rebase's mapping has done already).
        cdef mm_error err
        cdef mm_view old = self.view
        try:
            _rebasing.pop(retired, None)  # (removing from a dict never allocates)
        except BaseException:
            pass
        memset(&retired.pending, 0, sizeof(mm_view))
        if self._exports:
            # Kept for the arrays made on it, with its guard slot: a fault there (another
            # holder of the old file truncates it) is still caught, counted and reported as
            # this mapping's (with the slot removed it killed the process with SIGBUS).
            # Counted as a live view of the old file already (in _rebase).
            retired.view = old
            retired.exports = self._exports
            retired.generation = self._generation
            # Its faults are reported from these (guard_pop): after a rebase the Region's
            # own offset is the new file's, whose header may be longer.
            retired.guard_token = self._guard_token
            retired.offset = self._offset
            self._guard_token = 0
        else:
            self._drop_placeholder(retired)
            _count_view_gone(retired.file_dev, retired.file_ino)   # the count taken for it
            _unguard(self)           # its count goes to _faults_at_unmap, then the unmap
        try:
            _unregister(self)
        except BaseException:
            pass
        self.view = fresh[0]
        self._offset = retired.pending_offset
        self._exports = 0
        self._generation += 1
        self._file_dev = fresh.file_id[0]   # counted in _rebase
        self._file_ino = fresh.file_id[1]
        self._registered = True
        if not self._retired_holds(old):
            mm_unmap(&old, &err)
        if _guard_enabled:
            try:
                _guard(self)
            except BaseException:
                pass
        self._give_shape(retired.pending_shape)
        retired.pending_shape = None
        retired.pending_name = None

    @cython.final
    cdef void _drop_placeholder(self, _Retired retired) noexcept:
        # list.remove compares by identity here (no __eq__) and never allocates.
        try:
            self._retired.remove(retired)
        except BaseException:
            pass

    @cython.final
    cdef void _undo_rebase(self, mm_view *fresh, _Retired retired) noexcept:
        # Back to before the commit: the placeholder, both counts and the new view go.
        cdef mm_error err
        try:
            _rebasing.pop(retired, None)
        except BaseException:
            pass
        memset(&retired.pending, 0, sizeof(mm_view))
        retired.pending_shape = None
        retired.pending_name = None
        self._drop_placeholder(retired)
        _count_view_gone(fresh.file_id[0], fresh.file_id[1])
        _count_view_gone(retired.file_dev, retired.file_ino)
        mm_unmap(fresh, &err)

    @cython.final
    cdef bint _retired_holds(self, mm_view view):
        cdef _Retired retired
        for retired in self._retired or ():
            if retired.view.data == view.data:
                return True
        return False

    @cython.final
    cdef int _retire(self, mm_view view) except -1:
        """Keep ``view`` mapped (and counted as a live view of its file) for the current
        exports, which were made on it."""
        cdef _Retired retired = _Retired.__new__(_Retired)
        retired.view = view
        retired.exports = self._exports
        retired.generation = self._generation
        _live_add(view.file_id[0], view.file_id[1], 1)   # one more live view of the file
        retired.file_dev = view.file_id[0]
        retired.file_ino = view.file_id[1]
        # Its faults are reported from these (guard_pop): after a rebase the Region's own
        # offset is the new file's, whose header may be longer.
        retired.guard_token = self._guard_token
        retired.offset = self._offset
        if self._retired is None:
            self._retired = []
        self._retired.append(retired)
        return 0

    def _resize(self, int fd, uint64_t length, tuple shape, bint grow, bint cut=False):
        """Map ``length`` bytes from the same offset instead (``fd``: the same file, open for
        writing; checked), and take ``shape``. Arrays made before keep the view they were
        made on, mapped until they are gone (a _Retired); with none, the view is moved in
        place (mm_remap). Refused while an operation runs without the GIL, after a raw
        buffer export, whose users this cannot count, and while another thread resizes.

        With ``cut``, the file is then truncated where the new view ends: refused
        (BufferError) while any array of this mapping, or any other view of the file in this
        process, is alive, checked in the same step as the move; maps of the file that race
        the truncation see it and map again (as for a 'w+' reset)."""
        global _epoch
        cdef mm_error err
        cdef int status
        cdef mm_view fresh
        cdef int flags = MM_GROW if grow else 0
        self._check_movable()
        if self.view.data == NULL or self.view.data == &_empty_byte or length == 0:
            raise ValueError("only a mapping of at least one byte resizes, to at least one byte")
        shape, nbytes = _shape_nbytes(shape, self._dtype.itemsize)
        if <uint64_t>nbytes != length:
            raise ValueError(f"shape {shape} of dtype {self._dtype} is {nbytes} bytes, not "
                             f"{length}")
        st = _os.fstat(fd)           # releases the GIL: everything is checked again below
        # From here to the swap nothing releases the GIL: what is checked now still holds
        # when the view moves (another thread's flush or populating loop works on self.view
        # without the GIL, so the view must not move under it).
        self._check_movable()
        if (<uint64_t>st.st_dev, <uint64_t>st.st_ino) != (self.view.file_id[0],
                                                            self.view.file_id[1]):
            raise ValueError(f"{self._filename!r} is no longer the file this mapping maps "
                             f"(replaced or renamed over since): refusing to resize into it")
        key = None
        if cut:
            if self._exports:
                raise BufferError(f"cannot truncate {self._filename!r}: {self._exports} "
                                  f"array(s) of this mapping are alive over the part that "
                                  f"would be cut")
            if _live_count(self.view.file_id[0], self.view.file_id[1]) > 1:
                raise BufferError(f"cannot truncate {self._filename!r}: other mappings of it "
                                  f"are alive in this process")
            key = (self.view.file_id[0], self.view.file_id[1])
            if key in _truncating:
                raise BufferError(f"cannot truncate {self._filename!r}: another thread is "
                                  f"resetting or truncating it")
            # Marked as a 'w+' reset marks its file: a map of it from now on maps again.
            _epoch += 1
            _truncating[key] = True
            _truncated_at[key] = _epoch
        try:
            if self._exports == 0:
                _unguard(self)
                # With the GIL held: another thread's array, close() or resize() must not see
                # the view while it moves (mremap takes microseconds).
                status = mm_remap(&self.view, fd, self._offset, length, flags, &err)
                if _guard_enabled:
                    _guard(self)     # the view, moved or not, guarded again
                if status != MM_OK:
                    _raise(&err, self._filename, self._offset, length)
            else:
                # With the GIL held too: a concurrent resize or close must not retire or
                # unmap self.view between this map and the swap below.
                status = mm_map_handle(fd, self.view.access, self._offset, length, flags,
                                       &fresh, &err)
                if status != MM_OK:
                    _raise(&err, self._filename, self._offset, length)
                self._retire(self.view)  # keeps its guard slot: faults there still count
                self.view = fresh
                self._exports = 0
                self._generation += 1
                self._guard_token = 0
                if _guard_enabled:
                    _guard(self)
            self._give_shape(shape)
            if cut:
                # Nothing maps past the new end now (no array, no other view: checked above);
                # an array taken meanwhile is made on the new view.
                _os.ftruncate(fd, self._offset + length)
        finally:
            if key is not None:
                _end_truncation(key)

    # An operation that uses the region without the GIL (flush, advise, resident, a
    # populating loop) holds an export for its duration, counted as "busy" too: a child
    # forked meanwhile has no thread to release it, and drops it (_reset_after_fork).
    @cython.final
    cdef Py_ssize_t _acquire_busy(self) except -1:
        # Returns the fork generation the release must match.
        self._refuse_while_resized()
        self._acquire()
        self._busy += 1
        _busy_regions[id(self)] = self
        return _fork_generation

    @cython.final
    cdef int _release_busy(self, Py_ssize_t generation) except -1:
        if generation != _fork_generation or self._busy == 0:
            return 0                 # dropped by a fork in between: nothing left to release
        self._busy -= 1
        if self._busy == 0:
            _busy_regions.pop(id(self), None)
        return self._release()

    @cython.final
    cdef int _unmap_now(self) except -1:
        cdef mm_view view
        cdef mm_error err
        cdef int status
        if self._raw_exported:
            # A raw buffer consumer (np.ndarray(buffer=m), C code) may keep the pointer with
            # only a reference to self, not an export: unmap when self is garbage (__dealloc__).
            return 0
        if self.view.data == NULL or self.view.data == &_empty_byte:
            self.view.data = NULL
            return 0
        # Unguarded under the GIL, and the copy taken after: a copy still naming the guard's
        # slot would free it again in mm_unmap, without the GIL, when it may already guard
        # another thread's new view.
        _unguard(self)
        view = self.view
        # Clear before releasing the GIL: no other thread can see the view from here on.
        memset(&self.view, 0, sizeof(mm_view))
        _unregister(self)
        # Without the GIL even for a small read-only view (holding it would save ~0.03x of a
        # 4 KiB open+close): munmap(2) of any FUSE mapping, read-only ones included, writes
        # the file's inode out and waits (fs/fuse/file.c, fuse_vma_close): when the file is
        # dirty (data written by another writer) that needs the FUSE server, and a server
        # running in a thread of this process needs the GIL.
        with nogil:
            status = mm_unmap(&view, &err)
        if status != MM_OK:
            _raise(&err, self._filename, 0, 0)
        return 0

    def close(self, strict=False):
        """Close the mapping.

        Idempotent. With no exported array or memoryview alive the region is unmapped now.
        Otherwise the Mapping is marked closed and the region stays mapped until the last
        export is released, so no array is ever left pointing at unmapped memory.

        Once the Mapping itself has been used as a plain-bytes buffer
        (``np.ndarray(buffer=m)``, ``file.write(m)``, ``hashlib``), the unmap waits until the
        Mapping object is garbage: some buffer consumers keep the pointer while holding only a
        reference to the Mapping, not an export. Arrays from :attr:`array`, and typed buffers
        (``memoryview(m)``, ``np.asarray(m)``, ``np.frombuffer(m)``) are counted exactly and
        do not have this cost.

        Parameters
        ----------
        strict : bool, optional
            If True and exports are alive, raise :class:`BufferError` and change nothing.

        Raises
        ------
        BufferError
            ``strict=True`` and arrays or memoryviews of this mapping are alive.
        OSError
            Unmapping failed.
        MappedFileError
            (:class:`mmarray.Mapping`) The mapping is writable and faulted: what was written
            to the faulting pages is lost. The mapping is closed all the same.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> m = mmarray.open(path, mode="w+", shape=4)
        >>> a = m.array
        >>> m.close(strict=True)
        Traceback (most recent call last):
        ...
        BufferError: cannot close strictly: 1 export(s) of this mapping are alive
        >>> m.close(); m.closed, m.exports
        (True, 1)
        """
        if self._closed:
            return
        if strict and self.exports:
            raise BufferError(
                f"cannot close strictly: {self.exports} export(s) of this mapping are alive")
        _close_plain(self)

    def _closed_faulted(self):
        """Called by :meth:`close` (once the mapping is closed) when the fault guard caught
        faults in it: what that means is the subclass's business (mmarray.Mapping raises for
        a writable mapping). Nothing here."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    # -- properties -------------------------------------------------------------------------

    @property
    def closed(self):
        """True once :meth:`close` was called (the region may still be mapped for live arrays)."""
        return self._closed

    @property
    def exports(self):
        """Number of live exports: arrays from :attr:`array` (with their views) and memoryviews,
        those made before a resize included."""
        cdef _Retired retired
        cdef Py_ssize_t n = self._exports
        for retired in self._retired or ():
            n += retired.exports
        return n

    @property
    def dtype(self):
        """The :class:`numpy.dtype` of the mapped array."""
        return self._dtype

    @property
    def shape(self):
        """The shape of the mapped array, a tuple."""
        return self._shape_of()

    @property
    def order(self):
        """Memory layout, ``'C'`` or ``'F'``."""
        return self._order

    @property
    def offset(self):
        """Byte offset of the array's first element in the file."""
        return self._offset

    @property
    def mode(self):
        """The mode the file was mapped with: ``'r'``, ``'r+'``, ``'w+'`` or ``'c'``."""
        return self._mode

    @property
    def filename(self):
        """Absolute path of the mapped file, or None if it was given as a file object."""
        return self._filename

    @property
    def nbytes(self):
        """Size of the mapped array in bytes."""
        return self.size * self._dtype.itemsize

    @property
    def size(self):
        """Number of elements."""
        cdef Py_ssize_t n = 1
        for d in self._shape_of():
            n *= d
        return n

    # -- arrays and buffers -----------------------------------------------------------------

    @property
    def array(self):
        """A new plain :class:`numpy.ndarray` over the mapped region.

        Each access returns a new array object (not a subclass) that keeps the region mapped for
        as long as it, or any view derived from it, is alive. Read-only for mode ``'r'``.

        Raises
        ------
        ValueError
            The mapping is closed.
        """
        return _new_plain_array(self)

    def _array_of(self, subtype):
        """As :attr:`array`, of an ndarray subclass (``mmarray.memmap``; its class may have a
        metaclass other than ``type``)."""
        _check_subtype(subtype)
        return _array_of(self, <type>subtype)

    def _export(self):
        """A new export object to build an array on (``ndarray.__new__(..., buffer=it)``).

        It counts as one export from now until it is garbage: keep it only as an array's buffer.
        """
        return _new_export(self)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        # Two kinds of buffer. A consumer that asks for a format (memoryview(m), numpy's
        # np.asarray(m)) gets the typed buffer of a new array over the region, as ndarray
        # exports it: dtype, shape and strides of :attr:`array`. Its owner is that array,
        # which holds a counted export for as long as the consumer keeps the buffer. A
        # consumer that asks for plain bytes (hashlib, file.write, np.ndarray(buffer=m)) gets
        # the region as unsigned bytes, owned by the Mapping itself. A dtype whose buffer
        # format does not bring back the same dtype (datetime64, padded structs) has no typed
        # buffer: BufferError, on which numpy's np.asarray(m) turns to __array__
        # (mmarray.Mapping's, from _mapping.ArrayLike).
        cdef Py_buffer typed
        if (flags & PyBUF_WRITABLE) and self._readonly and not self._closed:
            raise BufferError("mapping is read-only (mode 'r')")
        if (flags & PyBUF_FORMAT) == PyBUF_FORMAT:
            if self._closed:
                raise ValueError("mapping is closed")
            if not _has_exact_format(self._dtype):
                raise BufferError(f"dtype {self._dtype} has no exact buffer format; use "
                                  f"Mapping.array or np.asarray(mapping)")
            array = self.array           # raises for a closed mapping; counts one export
            PyObject_GetBuffer(array, &typed, flags)
            # The fields point into the array's own buffer description, which lives as long
            # as the array; buffer.obj keeps the array alive until the consumer releases it.
            buffer.buf = typed.buf
            buffer.len = typed.len
            buffer.readonly = typed.readonly
            buffer.itemsize = typed.itemsize
            buffer.format = typed.format
            buffer.ndim = typed.ndim
            buffer.shape = typed.shape
            buffer.strides = typed.strides
            buffer.suboffsets = typed.suboffsets
            buffer.internal = typed.internal
            buffer.obj = array
            PyBuffer_Release(&typed)     # numpy keeps no per-buffer state to release
            return
        self._refuse_while_resized()  # a raw pointer is refused a move: not mid-resize
        self._acquire()
        self._raw_exported = True  # see _unmap_now: the consumer may outlive its export
        _fill_buffer(self, buffer, self, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        try:
            self._release()
        except BaseException:
            PyErr_WriteUnraisable(self)

    def _set_shape(self, tuple shape):
        """Give a region mapped to the end of its file its shape, once, before any export."""
        if self._closed:
            raise ValueError("mapping is closed")
        if self._shape_of() is not None or self._exports:
            raise ValueError("the shape of a region is set once, before any array is made")
        shape, nbytes = _shape_nbytes(shape, self._dtype.itemsize)
        if <uint64_t>nbytes != self._mapped_length():
            raise ValueError(f"shape {shape} of dtype {self._dtype} is {nbytes} bytes, but "
                             f"{self._mapped_length()} bytes are mapped")
        dtype, shape = _without_subarray(self._dtype, shape)
        self._dtype = dtype
        self._give_shape(shape)

    def _faults(self):
        """Faults the fault guard caught in this view (kept after the unmap)."""
        return self._fault_count()

    @cython.final
    cdef uint64_t _fault_count(self):
        # The views guarded before this one and gone (a resize or rebase re-guards the view
        # in a new slot: its faults are carried over, never reset), the views kept for
        # arrays made before a resize or rebase (each in its own slot), and this one.
        cdef _Retired retired
        cdef uint64_t n = self._faults_at_unmap
        if self._retired is not None:    # (iterating `or ()` cost a tuple iterator per close)
            for retired in <list>self._retired:
                n += mm_guard_faults(&retired.view)
        if self.view.data == NULL or self.view.data == &_empty_byte:
            return n
        return n + mm_guard_faults(&self.view)

    @cython.final
    cdef object _shape_of(self):
        # The shape tuple (None before _set_shape gives one): made here for the 1-D shape
        # the fast open left as _length1. Making the tuple can run the garbage collector,
        # and so any finalizer or gc callback, which may resize this region (helper-71): the
        # tuple is kept only if the shape is still the one it was made for.
        cdef Py_ssize_t n = self._length1
        if self._shape is None and n >= 0:
            shape = (n,)
            if self._shape is None and self._length1 == n:
                self._shape = shape
                self._length1 = -1
        return self._shape

    @cython.final
    cdef int _give_shape(self, shape) except -1:
        self._shape = shape
        self._length1 = -1
        return 0

    def _identity(self):
        """(st_dev, st_ino) of the mapped file, or None when nothing is mapped."""
        if self.view.data == NULL or self.view.data == &_empty_byte:
            return None
        return (self.view.file_id[0], self.view.file_id[1])

    def _data_address(self):
        """Address of the region's first byte (0 when nothing is mapped): to locate views."""
        if self.view.data == NULL or self.view.data == &_empty_byte:
            return 0
        return <size_t>self.view.data

    def _mapped_length(self):
        """Bytes mapped (0 once unmapped)."""
        return self.view.length if self.view.data != &_empty_byte else 0

    # -- region operations (byte ranges relative to the array's first byte; errors name
    # -- file offsets) ------------------------------------------------------------------------

    def _flush_bytes(self, uint64_t start, uint64_t length, bint sync):
        cdef mm_error err
        cdef int status
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return
        generation = self._acquire_busy()
        try:
            with nogil:
                status = mm_flush(&self.view, start, length, sync, &err)
            if status != MM_OK:
                _raise(&err, self._filename, self._offset + start, length)
        finally:
            self._release_busy(generation)

    def _advise_bytes(self, uint64_t start, uint64_t length, int advice):
        cdef mm_error err
        cdef int status
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return
        generation = self._acquire_busy()
        try:
            with nogil:
                status = mm_advise(&self.view, start, length, advice, &err)
            if status != MM_OK:
                _raise(&err, self._filename, self._offset + start, length)
        finally:
            self._release_busy(generation)

    def _resident_bytes(self, uint64_t start, uint64_t length):
        cdef mm_error err
        cdef int status
        cdef uint64_t resident = 0, total = 0
        if self.view.data == &_empty_byte or length == 0:
            if self._closed:
                raise ValueError("mapping is closed")
            return 0, 0
        generation = self._acquire_busy()
        try:
            with nogil:
                status = mm_resident(&self.view, start, length, &resident, &total, &err)
            if status != MM_OK:
                _raise(&err, self._filename, self._offset + start, length)
        finally:
            self._release_busy(generation)
        return resident, total

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (f"<mmarray.Mapping {state} mode={self._mode!r} dtype={self._dtype} "
                f"shape={self._shape_of()} offset={self._offset} file={self._filename!r} "
                f"exports={self._exports}>")

    def __reduce__(self):
        # mmarray.Mapping pickles by reference (its own __reduce__); a bare Region has no
        # file name to refer to.
        raise TypeError(f"cannot pickle a {type(self).__name__}: it has no file name to "
                        f"refer to")


cdef dict _exact_formats = {}     # dtype -> whether its PEP 3118 format round-trips


cdef bint _has_exact_format(dtype) except -1:
    """Whether numpy reads back ``dtype`` itself from the buffer format it exports for it."""
    exact = _exact_formats.get(dtype)
    if exact is None:
        try:
            exact = _np.asarray(memoryview(_np.zeros(1, dtype))).dtype == dtype
        except (ValueError, TypeError, RuntimeError, BufferError, NotImplementedError):
            exact = False
        if len(_exact_formats) < 1024:
            _exact_formats[dtype] = exact
    return exact


cdef char *_BYTE_FORMAT = "B"   # struct's format of an unsigned byte, static storage


cdef inline void _fill_buffer(Region m, Py_buffer *buffer, object owner, int flags):
    # PyBuffer_FillInfo's semantics (not the call: Cython owns buffer.obj's reference): a
    # one-dimensional unsigned-byte buffer; format, shape and strides only when requested.
    buffer.buf = m.view.data
    buffer.obj = owner
    buffer.len = <Py_ssize_t>m.view.length
    buffer.readonly = m._readonly
    buffer.itemsize = 1
    buffer.format = _BYTE_FORMAT if (flags & PyBUF_FORMAT) == PyBUF_FORMAT else NULL
    buffer.ndim = 1
    buffer.shape = &buffer.len if (flags & PyBUF_ND) == PyBUF_ND else NULL
    buffer.strides = &buffer.itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
    buffer.suboffsets = NULL
    buffer.internal = NULL


@cython.auto_pickle(False)  # a copy would release an export it never acquired
@cython.no_gc  # untracked: no cycle passes through an export (see _engine.pxd)
@cython.freelist(16)  # one per array made and freed: reused, not allocated each time
cdef class _ArrayExport:
    """Holds one export of a Mapping for exactly as long as the array built on it lives.

    ``ndarray.__new__(buffer=obj)`` releases obj's buffer at once and keeps only a reference to
    obj, so the export is counted here, from creation to deallocation, not in the buffer call.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("_ArrayExport objects are made by Mapping.array, not directly")

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        # The Mapping cannot be unmapped while self exists (self holds one export).
        if self.mapping is None:
            raise ValueError("export is not attached to a mapping")
        if (flags & PyBUF_WRITABLE) and self.mapping._readonly:
            raise BufferError("mapping is read-only (mode 'r')")
        # The view of the generation this export was made on (and counts against), not the
        # mapping's current one: after a resize or a rebase only the former stays mapped for
        # as long as self lives.
        _fill_buffer(self.mapping, buffer, self, flags)
        buffer.buf = self.data
        buffer.len = self.length

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __reduce__(self):
        raise TypeError("cannot pickle or copy an array export (it counts one use of a "
                        "mapping); copy the array instead")

    def __dealloc__(self):
        if self.mapping is not None:
            try:
                self.mapping._release_export(self.generation)
            except BaseException:
                PyErr_WriteUnraisable(self.mapping)

    @property
    def mapping(self):
        """The Mapping this array export belongs to."""
        return self.mapping


def map_file(file, int access, uint64_t offset, uint64_t length, int flags, dtype, shape,
             order, mode, filename, type cls=Region):
    """Map ``[offset, offset + length)`` of ``file`` and return a ``cls`` (a Mapping).

    ``file`` is ``bytes`` (an encoded path), an ``int`` (an OS handle: fd or HANDLE) or None
    (an empty mapping: no OS call; ``shape`` must then be of size 0). ``length`` may be
    ``TO_END`` with ``shape`` None: the caller then gives the shape with ``_set_shape`` (or
    closes the region) before any array is made. ``length`` 0
    maps nothing but checks, creates or grows the file as for data. Otherwise ``shape`` must
    describe exactly ``length`` bytes: the engine never builds an array larger than what it
    mapped, whatever the caller passes. ``CREATE`` (a path only) resets an existing file
    after proving, on the open descriptor, that this process maps no view of it.
    """
    cdef Region m
    cdef Py_ssize_t nbytes = 0
    if not issubclass(cls, Region):
        raise TypeError(f"cls must be Region or a subclass of it, got {cls!r}")
    if not isinstance(dtype, _np.dtype):
        raise TypeError(f"dtype must be a numpy.dtype, got {type(dtype).__name__}")
    if dtype.hasobject:
        raise TypeError(f"dtype {dtype} cannot be mapped: it holds Python objects")
    if dtype.itemsize == 0 and shape is None:  # an array of no bytes, of a given shape only
        raise ValueError(f"dtype {dtype} has itemsize 0: a shape is needed (no length of "
                         f"the file gives one)")
    if not (isinstance(order, str) and (order == "C" or order == "F")):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    if flags & ~(MM_CREATE | MM_GROW | MM_POPULATE):
        raise ValueError(f"flags {flags:#x} has bits other than CREATE, GROW and POPULATE")
    if shape is not None:
        shape, nbytes = _shape_nbytes_c(shape, dtype.itemsize)
        if length == MM_TO_END or <uint64_t>nbytes != length:
            raise ValueError(f"shape {shape} of dtype {dtype} is {nbytes} bytes, but "
                             f"{'the rest of the file' if length == MM_TO_END else length} "
                             f"bytes are to be mapped")
        dtype, shape = _without_subarray(dtype, shape)
    elif length != MM_TO_END:
        raise ValueError("shape must be given unless the mapping runs to the end of the file")
    m = cls.__new__(cls)
    if type(m) is not cls or m.view.data != NULL or m._exports or \
            m._registered or m._dtype is not None:
        raise TypeError(f"{cls.__name__}.__new__ must return a new, bare {cls.__name__}")
    if file is None:
        if shape is None or nbytes != 0:
            raise ValueError(f"an empty mapping (no file) needs a shape of size 0, got "
                             f"{shape!r}")
    elif isinstance(file, bytes):
        file = bytes(file)           # np.bytes_ and other subclasses: the plain bytes
        if b"\0" in file:
            raise ValueError("embedded null byte")  # as os.open: C would stop at it
        if flags & MM_CREATE:
            _create_and_map(m, file, access, offset, length, flags & ~MM_CREATE, filename)
        else:
            _map_and_register(m, <bytes>file, 0, access, offset, length, flags, filename)
    elif isinstance(file, int) and not isinstance(file, bool):
        if file < 0 or file > (_HANDLE_MAX if _os.name == "nt" else _FD_MAX):
            raise ValueError(f"file descriptor {file} is out of range; expected 0 to "
                             f"{_FD_MAX}")
        if flags & MM_CREATE:
            raise ValueError("CREATE needs a path, not a file descriptor")
        _map_and_register(m, NULL, file, access, offset, length, flags, filename)
    else:
        raise TypeError(f"file must be bytes (an encoded path), an int (a descriptor) or "
                        f"None, got {type(file).__name__}")
    if m.view.data == NULL:          # nothing mapped (length 0): a valid, empty buffer
        m.view.data = &_empty_byte
        m.view.length = 0
    _set_up(m, access, dtype, shape, order, mode, filename, offset)
    return m


cdef int _set_up(Region m, int access, dtype, shape, order, mode, filename,
                 uint64_t offset) except -1:
    """Give a region just mapped (and registered) what it reports, open it and guard its
    view: the last step of map_file and of its fast paths (open_to_end, map_by_header)."""
    m._closed = False
    m._readonly = access == MM_READ
    m._dtype = dtype
    m._give_shape(shape)
    m._order = order
    m._mode = mode
    m._filename = filename
    m._offset = offset
    if _guard_enabled and m.view.data != &_empty_byte:
        _guard(m)
    return 0


# -- the common case of mmarray.open and mmarray.memmap -------------------------------------------
# A str path mapped whole: no offset, shape, order, populate or advice. The Python layer
# (mmarray._api) hands in its tables -- the mode names the common case takes and what they
# mean, the dtypes it has checked, the class of the result, how it makes a path absolute --
# and the engine only looks them up: the policy stays theirs.
cdef dict _fast_modes = {}       # mode name -> (short mode, access, flags)
cdef dict _fast_dtypes = {}      # dtype argument -> checked numpy.dtype
cdef type _fast_cls = Region
cdef object _fast_abspath = None  # str -> absolute str, for a path not already absolute
cdef bint _fast_utf8 = False      # str paths reach the C layer as UTF-8 (else no fast path)
cdef bint _fast_posix = True      # '/'-rooted paths without '//', '/.' or a trailing '/'
                                  # are absolute and normal as they are
cdef object _fast_general = None  # the Python layer's open, for what open() does not take
cdef object _open_builtin = None  # what open_builtin made: refused as the general open too
# The last mode and the last str or class dtype argument found in the tables, with what the
# table gave, each as one tuple (key, value): a program passes the same objects call after
# call ('r', 'uint8', np.float32), and each dict lookup cost more than the rest of this
# function (the dtype table mixes key types). One tuple, stored in one step: a reader in
# another thread never pairs a key with another key's value. Emptied by set_fast_open.
cdef tuple _last_mode = (None, None)
cdef tuple _last_dtype = (None, None)


def set_fast_open(dict modes not None, dict dtypes not None, type cls not None, abspath,
                  bint utf8_paths, bint posix, general):
    """Install the tables of :func:`open_to_end` (see there), and the ``general`` open that
    :func:`open` calls for what those do not take: with open's signature and defaults, as
    it is called with all of open's arguments, or with only ``(file, dtype, mode)`` for the
    calls that give no other. The tables are the caller's: an entry, once in, must keep its
    value (they are read through a one-entry cache)."""
    global _fast_modes, _fast_dtypes, _fast_cls, _fast_abspath, _fast_utf8, _fast_posix
    global _fast_general, _last_mode, _last_dtype
    if not issubclass(cls, Region):
        raise TypeError(f"cls must be Region or a subclass of it, got {cls!r}")
    if not callable(abspath):
        raise TypeError(f"abspath must be callable, got {type(abspath).__name__}")
    if not callable(general) or general is open or general is _open_builtin:
        raise TypeError(f"general must be a callable other than the engine's open, got "
                        f"{general!r}")
    for spec in modes.values():
        if not (type(spec) is tuple and len(spec) == 3 and type(spec[0]) is str
                and spec[1] in (MM_READ, MM_WRITE, MM_COPY)
                and type(spec[2]) is int and not spec[2] & ~(MM_GROW | MM_POPULATE)):
            raise ValueError(f"a mode's spec must be (short mode, access, flags without "
                             f"CREATE), got {spec!r}")
    _fast_modes = modes
    _fast_dtypes = dtypes
    _fast_cls = cls
    _fast_abspath = abspath
    _fast_utf8 = utf8_paths
    _fast_posix = posix
    _fast_general = general
    _last_mode = _last_dtype = (None, None)


cdef bint _normal_absolute(const char *path, Py_ssize_t n) noexcept:
    # What os.path.abspath leaves as it is on POSIX (mmarray._api._abspath's test): '/' first,
    # no '//', no '/.', no '/' last. On the UTF-8 bytes: '/' and '.' are never part of a
    # multi-byte character there.
    cdef const char *slash = path
    cdef const char *last
    if n == 0 or path[0] != b'/' or path[n - 1] == b'/':
        return False
    last = path + n - 1              # the last byte: n > 0
    while slash < last:
        # slash < last, so slash + 1 is still inside the n bytes of the path
        if slash[1] == b'/' or slash[1] == b'.':
            return False
        # the next '/' after this one, searched in the bytes up to the last
        slash = <const char *>memchr(slash + 1, b'/', <size_t>(last - slash))
        if slash == NULL:
            return True
    return True


cdef const char *_utf8_path(str file, Py_ssize_t *size) except? NULL:
    # The UTF-8 of a str path as the C layer takes it (kept alive by `file`), or NULL for one
    # the fast paths leave to the general path: empty, with an embedded null byte, or not
    # encodable strictly (lone surrogates, which the general path encodes).
    cdef const char *path
    try:
        path = PyUnicode_AsUTF8AndSize(file, size)
    except UnicodeError:
        return NULL
    if size[0] == 0 or strlen(path) != <size_t>size[0]:
        return NULL
    return path


cdef inline Region _new_region(type cls):
    # cls.__new__(cls) without the generic call, for a class whose tp_new is Region's (it
    # defines no __new__: mmarray.Mapping and those of it), which gives a new, bare object of
    # cls. None for any other class: the caller falls back to map_file, which calls its
    # __new__ and checks what it returns.
    if (<PyTypeObject *>cls).tp_new != (<PyTypeObject *>Region).tp_new:
        return None
    return <Region>(<PyTypeObject *>cls).tp_new(<PyTypeObject *>cls,
                                                 <PyObject *>_EMPTY_TUPLE, NULL)


def open(file, dtype="uint8", mode="r+", offset=0, shape=None, order="C", *,
         populate=False, advise=None):
    """``mmarray.open``: the common case (see :func:`open_to_end`) made here in one call,
    anything else (and any failure) by the general open the Python layer installed with
    :func:`set_fast_open`, which checks the arguments and raises. The signature and the
    defaults are that function's (a test holds them equal): the Python layer shows its
    docstring and signature on this function. (Named ``open`` for the messages of its
    argument errors; this module uses no other ``open``.)"""
    m = _open_to_end(file, dtype, mode, offset, shape, order, populate, advise)
    if m is not None:
        return m
    # A general open that calls this one again through C (functools.partial) would
    # overflow the C stack: a RecursionError instead.
    mm_enter_recursive_call(" in mmarray.open")
    try:
        return _fast_general(file, dtype, mode, offset, shape, order, populate=populate,
                             advise=advise)
    finally:
        Py_LeaveRecursiveCall()


cdef object _open_general(file, dtype, mode):
    # open's second half for open(file, dtype, mode) (mm_open_vectorcall): the general open
    # with the other parameters left to their defaults, which are open's.
    mm_enter_recursive_call(" in mmarray.open")
    try:
        return _fast_general(file, dtype, mode)
    finally:
        Py_LeaveRecursiveCall()


# The common calls of open skip its argument parsing (mm_open_vectorcall) while its
# parameters are file, dtype and mode, then offset, shape and order, then keyword-only populate
# and advise, and the defaults of the last five are those _open_plain stands for.
if (open.__code__.co_varnames[:8] == ("file", "dtype", "mode", "offset", "shape", "order",
                                      "populate", "advise")
        and open.__code__.co_kwonlyargcount == 2 and open.__defaults__[2:] == (0, None, "C")
        and open.__kwdefaults__ == {"populate": False, "advise": None}):
    mm_set_open_vectorcall(open, _open_plain, _open_general, open.__defaults__[0],
                           open.__defaults__[1], "dtype", "mode")


cdef int _check_subtype(subtype) except -1:
    if not (isinstance(subtype, type) and issubclass(subtype, _ndarray)):
        raise TypeError(f"subtype must be numpy.ndarray or a subclass of it, got {subtype!r}")
    return 0


cdef int _close_plain(Region m) except -1:
    # m.close(): closed from now on, unmapped once no export is left. The faults are counted
    # last, the unmapped view's kept by _unguard (no second read of its guard slot), and with
    # any a populating loop caught while it was stopped.
    if m._closed:
        return 0
    m._closed = True
    if m._loops:
        _stop_loops(m)
    if m._exports == 0:
        m._unmap_now()
    if m._fault_count() != 0:
        m._closed_faulted()
    return 0


cdef int _close_object(object m) except -1:
    # _close_plain for mm_close_fastcall, whose descriptor checked that m is a Region.
    return _close_plain(<Region>m)


def set_close_method(cls, bytes doc not None):
    """Make ``cls.close`` (``cls`` a class made by a class statement that subclasses Region) a
    method descriptor of ``cls`` that calls Region's close: the interpreter then calls it
    from the call site, without the generic call of a Cython method (CPython 3.11: ~100
    instructions fewer per ``close()``). ``doc``: the method's docstring with its text
    signature first (``b"close($self, /, strict=False)\\n--\\n\\n..."``). Each call keeps the
    descriptor's definition and ``doc`` for the process's lifetime. TypeError for another
    class."""
    if not (isinstance(cls, type) and issubclass(cls, Region) and cls is not Region
            and PyType_HasFeature(<PyTypeObject *>cls, Py_TPFLAGS_HEAPTYPE)):
        raise TypeError(f"expected a class made by a class statement that subclasses Region, "
                        f"got {cls!r}")
    mm_set_close_method(cls, Region.__dict__["close"], _close_object, doc)


def open_builtin(bytes doc not None, str module_name not None):
    """:func:`open` as a built-in function (made once: the same object on later calls) whose
    calls are those of :func:`open`: the interpreter calls it from the call site, without
    the generic call of a Cython function (CPython 3.11: ~50 instructions fewer per call).
    ``doc``: its docstring with its text signature first (``b"open(file, ...)\n--\n\n..."``);
    ``module_name``: its ``__module__``. :func:`open` itself when its calls do not take
    the fast path (its signature is not the one assumed)."""
    global _open_builtin
    made = mm_make_open_builtin(open, doc, module_name)
    if made is None:
        return open
    _open_builtin = made
    return made


cdef _ArrayExport _new_export(Region m):
    # A new export of m's current view, counted (Region._export).
    cdef _ArrayExport export = _ArrayExport.__new__(_ArrayExport)
    m._acquire()                     # count first: an array made on it may trigger GC
    export.mapping = m
    export.generation = m._generation
    export.data = <char *>m.view.data
    export.length = <Py_ssize_t>m.view.length
    return export


cdef object _array_of(Region m, type subtype):
    # Region._array_of, for a subtype checked by _check_subtype.
    return _new_array(m, subtype, _new_export(m))


def array_to_end(subtype, tuple names not None, file, dtype, mode, offset, shape, order):
    """``open_to_end(file, dtype, mode, offset, shape, order, False, None)`` and an array of
    ``subtype`` (numpy.ndarray or a subclass) over the new mapping, as its ``_array_of``
    makes it, in one call: what ``mmarray.memmap`` needs for its common case. The array's
    attributes named by ``names`` (four str) are set to the mapping, 0, its mode and its
    file name: in one new instance dictionary when no ``__array_finalize__`` ran but the one
    :func:`trust_array_finalize` was given for ``subtype``, the class sets attributes as
    ``object`` does (no ``__setattr__`` of its own) and none of the names is a data
    descriptor (a property) of the class; else one by one, in that order.

    Returns None where open_to_end does, and for a ``subtype`` that is no ndarray class (the
    caller's general path raises). Raises what making the array or setting its attributes
    raises: the new mapping is then garbage, and unmapped."""
    cdef Region m
    cdef bint trusted
    if not (len(names) == 4 and type(names[0]) is str and type(names[1]) is str
            and type(names[2]) is str and type(names[3]) is str):
        raise TypeError(f"names must be four str, got {names!r}")
    if not (isinstance(subtype, type) and issubclass(subtype, _ndarray)):
        return None
    fast = _open_to_end(file, dtype, mode, offset, shape, order, False, None)
    if fast is None:
        return None
    m = <Region>fast
    array = _new_array(m, <type>subtype, _new_export(m), &trusted)
    if trusted and (<PyTypeObject *>subtype).tp_setattro == PyObject_GenericSetAttr \
            and mm_names_stored_plainly(subtype, names):
        # The same dictionary as four setattrs make, in ~60% of their instructions
        # (callgrind: ~800 against ~1,350).
        # Straight into the array's new instance dictionary (callgrind: ~870 instructions
        # against ~1,350 for the four setattrs, which look each name up in the class again).
        attributes = PyObject_GenericGetDict(array, NULL)
        attributes[names[0]] = m
        attributes[names[1]] = 0
        attributes[names[2]] = m._mode
        attributes[names[3]] = m._filename
    else:
        setattr(array, names[0], m)
        setattr(array, names[1], 0)
        setattr(array, names[2], m._mode)
        setattr(array, names[3], m._filename)
    return array


def open_to_end(file, dtype, mode, offset, shape, order, populate, advise):
    """The common case of ``mmarray.open(file, dtype, mode, offset, shape, order,
    populate=..., advise=...)``, end to end: ``file`` a non-empty str, ``offset`` the int 0,
    ``shape`` and ``advise`` None, ``order`` ``'C'``, ``populate`` False, a mode and a dtype
    found in the tables :func:`set_fast_open` installed. The file is mapped whole, as a 1-D
    array of the dtype, into a new object of the installed class.

    Returns None for any other call, and for any call that does not succeed (no such file,
    an empty file, a size that is not a multiple of the itemsize, ...): nothing is left
    mapped or registered, and the caller's general path then makes the call and raises what
    it raises."""
    return _open_to_end(file, dtype, mode, offset, shape, order, populate, advise)


cdef object _open_to_end(file, dtype, mode, offset, shape, order, populate, advise):
    if shape is not None or advise is not None or populate is not False \
            or type(offset) is not int or offset != 0 or type(order) is not str \
            or order != "C":
        return None
    return _open_plain(file, dtype, mode)


cdef object _open_plain(file, dtype, mode):
    # _open_to_end(file, dtype, mode, 0, None, "C", False, None).
    global _last_mode, _last_dtype
    cdef Region m
    cdef const char *path
    cdef Py_ssize_t size, itemsize
    cdef uint64_t length
    cdef tuple spec                  # (short mode, access, flags): checked by set_fast_open
    if type(file) is not str or type(mode) is not str or not _fast_utf8:
        return None
    # Each table is held here for its lookup: a key's __eq__ (of a dtype argument) may run
    # Python code, even set_fast_open, which must neither free the table being read nor see
    # a value of the old table kept as the last one found.
    cdef dict table = _fast_modes
    cdef tuple last = _last_mode
    if last[0] is mode:
        spec = last[1]
    else:
        spec = table.get(mode)
        if spec is None:
            return None
        # The tuple first: making it may run the garbage collector, and a finalizer may
        # install other tables; nothing runs between the check and the store.
        last = (mode, spec)
        if _fast_modes is table:
            _last_mode = last
    last = _last_dtype
    if last[0] is dtype:
        dt = last[1]
    else:
        table = _fast_dtypes
        try:
            dt = table.get(dtype)
        except TypeError:            # an unhashable dtype argument (a list of fields)
            return None
        # Kept for what programs pass literally, a str or a class ('f4', np.float32). (The
        # tuple first, as for the mode.)
        if dt is not None and (type(dtype) is str or type(dtype) is type):
            last = (dtype, dt)
            if _fast_dtypes is table:
                _last_dtype = last
    if dt is None or cnp.PyDataType_HASSUBARRAY(<cnp.dtype>dt):  # subarray: map_file
        return None
    if (<cnp.dtype>dt).itemsize <= 0:  # the file's length is divided by it below
        return None
    path = _utf8_path(file, &size)
    if path == NULL:
        return None
    filename = file if _fast_posix and _normal_absolute(path, size) else _fast_abspath(file)
    m = _new_region(_fast_cls)
    if m is None:
        return None
    try:
        _map_and_register(m, path, 0, spec[1], 0, MM_TO_END, spec[2], filename)
    except Exception:
        return None                  # m is dropped: nothing was mapped or registered
    itemsize = (<cnp.dtype>dt).itemsize
    length = m.view.length
    if length % <uint64_t>itemsize:
        m._closed = True
        m._unmap_now()
        return None
    _set_up(m, spec[1], dt, None, "C", spec[0], filename, 0)
    m._length1 = <Py_ssize_t>(length // <uint64_t>itemsize)  # the shape, made when asked for
    return m


#: Bytes map_by_header reads at most.
HEAD_MAX = 4096


def map_by_header(file, int access, mode, Py_ssize_t n, layout, type cls not None,
                  dict known=None, tuple known_lengths=()):
    """Open the str path ``file`` (for ``access``, as :func:`map_file` opens a path), read
    its first ``n`` bytes (at most ``HEAD_MAX``) and find what to map of it: first in
    ``known``, the value it holds for the first ``length`` bytes read, for each ``length`` of
    ``known_lengths`` in turn that was read whole (no Python call: the caller fills ``known``
    with answers ``layout`` gave, keyed by the whole prefix each depends on); else by asking
    ``layout(first_bytes)``. Either gives None, or ``(offset, nbytes, dtype, shape, order)``
    with ``nbytes`` > 0 bytes at ``offset`` holding an array of that dtype, shape and order.
    That range of the same open file is mapped as a ``cls`` of mode ``mode``, whose file name
    is ``file`` made absolute (as the installed ``abspath`` makes it, see
    :func:`set_fast_open`). One open, one read, one map.

    Returns None when ``layout`` does, for a path the fast open does not take (not a
    non-empty str, or not encodable as the C layer's UTF-8), and for any failure to open,
    read or map: nothing is left open, mapped or registered, and the caller's general path
    then opens the file again and raises what it raises. Raises what ``layout`` raises, and
    TypeError or ValueError for a layout that does not describe ``nbytes``."""
    cdef char buf[4096]
    cdef const char *path
    cdef Py_ssize_t size, length
    cdef mm_handle handle
    cdef uint64_t got
    cdef mm_error err
    cdef int status
    cdef Region m
    if type(file) is not str or not _fast_utf8 or n < 0 or n > 4096:
        return None
    if not issubclass(cls, Region):
        raise TypeError(f"cls must be Region or a subclass of it, got {cls!r}")
    path = _utf8_path(file, &size)
    if path == NULL:
        return None
    with nogil:
        status = mm_open_read(path, access, buf, n, &got, &handle, &err)
    if status != MM_OK:
        return None
    try:
        spec = None
        if known is not None:
            for item in known_lengths:
                length = item
                if 0 < length <= <Py_ssize_t>got:
                    spec = known.get(PyBytes_FromStringAndSize(buf, length))
                    if spec is not None:
                        break
        if spec is None:
            spec = layout(PyBytes_FromStringAndSize(buf, <Py_ssize_t>got))
        if spec is None:
            return None
        offset, nbytes, dtype, shape, order = spec
        if type(offset) is not int or type(nbytes) is not int:
            raise TypeError(f"layout gave offset {offset!r} and nbytes {nbytes!r}; expected "
                            f"ints")
        # dtype.hasobject and dtype.itemsize, read from the C struct (the same fields)
        if not isinstance(dtype, cnp.dtype) or (<cnp.dtype>dtype).flags & _NPY_ITEM_HASOBJECT \
                or (<cnp.dtype>dtype).itemsize == 0:
            raise TypeError(f"layout gave dtype {dtype!r}; expected a numpy.dtype of plain "
                            f"data")
        if not (type(order) is str and (order == "C" or order == "F")):
            raise ValueError(f"layout gave order {order!r}; expected 'C' or 'F'")
        shape, total = _shape_nbytes_c(shape, (<cnp.dtype>dtype).itemsize)
        if total != nbytes or nbytes <= 0 or offset < 0:
            raise ValueError(f"layout gave {nbytes} bytes at offset {offset} for shape "
                             f"{shape} of {dtype}; expected the shape's size, at least 1")
        dtype, shape = _without_subarray(dtype, shape)
        filename = file if _fast_posix and _normal_absolute(path, size) \
            else _fast_abspath(file)
        m = _new_region(cls)
        if m is None:
            return None
        try:
            _map_and_register(m, NULL, handle, access, offset, nbytes, 0, filename)
        except Exception:
            return None              # m is dropped: nothing was mapped or registered
    finally:
        with nogil:
            mm_close_handle(handle)  # the view does not need it
    _set_up(m, access, dtype, shape, order, mode, filename, offset)
    return m


cdef tuple _shape_nbytes_c(shape, Py_ssize_t itemsize):
    """:func:`_shape_nbytes`, without a Python call for the common shape: an exact tuple of
    at most ``_MAX_DIMS`` exact ints from 0 to the largest intp, whose product with
    ``itemsize`` fits in 63 bits, is its own checked copy (immutable, and nothing a subclass
    overrides is read). Anything else -- other types, out of range, an overflow on the way
    -- goes to :func:`_shape_nbytes`, which gives the same result or raises."""
    cdef Py_ssize_t i, nd, d
    cdef uint64_t total
    if type(shape) is not tuple or itemsize < 0:
        return _shape_nbytes(shape, itemsize)
    nd = len(<tuple>shape)
    if nd > 64:
        return _shape_nbytes(shape, itemsize)
    total = <uint64_t>itemsize
    for i in range(nd):
        item = (<tuple>shape)[i]
        if type(item) is not int:
            return _shape_nbytes(shape, itemsize)
        try:
            d = PyLong_AsSsize_t(item)
        except OverflowError:
            d = -1
        if d < 0 or not _intp_is_ssize:  # negative or too large: the general path says so
            return _shape_nbytes(shape, itemsize)
        if total != 0 and <uint64_t>d > (<uint64_t>0x7FFFFFFFFFFFFFFF) // total:
            return _shape_nbytes(shape, itemsize)   # past 63 bits (or not, after a 0 later)
        total *= <uint64_t>d
    return shape, total


cdef tuple _without_subarray(cnp.dtype dtype, tuple shape):
    """``(dtype, shape)`` as the array numpy builds over them reports them: a subarray dtype
    such as ``'(2,)i4'`` gives its base dtype, and its dimensions go after ``shape`` (as
    ``numpy.ndarray`` and ``numpy.memmap`` do, in order 'C' and 'F' alike: the bytes and
    their layout stay the same). Other dtypes come back as they are. ValueError past
    ``_MAX_DIMS`` dimensions, as numpy raises."""
    if dtype is None or not cnp.PyDataType_HASSUBARRAY(dtype):
        return dtype, shape
    whole = shape
    while dtype.subdtype is not None:    # a subarray of subarrays: numpy nests the shapes
        whole = whole + dtype.shape
        dtype = dtype.base
    if len(whole) > _MAX_DIMS:
        raise ValueError(f"shape {shape} with the {len(whole) - len(shape)} dimensions of "
                         f"its subarray dtype has {len(whole)} dimensions, more than "
                         f"{_MAX_DIMS}")
    return dtype, whole


def without_subarray(cnp.dtype dtype not None, tuple shape not None):
    """``(dtype, shape)`` as an array of ``shape`` and the subarray dtype ``dtype`` reports
    them (see :func:`map_file`); for the .npy code, which writes and reads headers."""
    return _without_subarray(dtype, shape)


def _shape_nbytes(shape, Py_ssize_t itemsize):
    """(tuple of ints, nbytes) for a shape the engine can build an array of, or raise.

    The result is a new exact tuple of exact ints, read through the base types' own methods:
    a tuple or int subclass cannot show the size check one shape and the array another."""
    if not isinstance(shape, tuple):
        raise TypeError(f"shape must be a tuple of ints, got {type(shape).__name__}")
    items = list(tuple.__iter__(shape))
    if len(items) > _MAX_DIMS:
        raise ValueError(f"shape has {len(items)} dimensions, more than {_MAX_DIMS}")
    total = itemsize
    for i, d in enumerate(items):
        if not isinstance(d, int) or isinstance(d, bool):
            raise TypeError(f"shape must be a tuple of ints, got an element of type "
                            f"{type(d).__name__}")
        d = items[i] = int.__index__(d)   # the exact value, whatever the subclass overrides
        if d < 0 or d > _INTP_MAX:
            raise ValueError(f"shape has a dimension outside 0 to {_INTP_MAX}")
        total *= d
    shape = tuple(items)
    if total > _INT64_MAX:
        raise ValueError(f"shape describes more than {_INT64_MAX} bytes")
    return shape, total


cdef int _map_and_register(Region m, const char *path, mm_handle handle, int access,
                           uint64_t offset, uint64_t length, int flags, filename) except -1:
    """Map by path (``path``, not NULL) or by descriptor, and register the view."""
    global _in_flight
    cdef mm_error err
    cdef int status, attempt
    cdef unsigned long long started
    for attempt in range(_MAP_ATTEMPTS):
        if attempt:
            with nogil:
                mm_pause(1000 * attempt)   # let the reset that raced this map finish
        started = _epoch
        _in_flight += 1
        try:
            with nogil:
                if path != NULL:
                    status = mm_map_path(path, access, offset, length, flags, &m.view, &err)
                else:
                    status = mm_map_handle(handle, access, offset, length, flags, &m.view,
                                           &err)
            if status != MM_OK:
                _raise(&err, filename, offset, length)
            if m.view.data == NULL:
                return 0             # length 0: nothing mapped, nothing to register
            if _register_unless_reset(m, started):
                return 0
            _drop_view(m)            # raced a 'w+' reset: the view may outrun the file
        finally:
            _in_flight -= 1
            _prune_truncations()
    _refuse(RACED_RESETS, _MAP_ATTEMPTS, filename)


cdef int _create_and_map(Region m, bytes path, int access, uint64_t offset, uint64_t length,
                         int flags, filename) except -1:
    """Mode 'w+': create the file or reset it in place, never one this process maps.

    The identity is taken from the open descriptor (fstat), so the check is about the file
    that will be reset, not whatever the path named a moment earlier.
    """
    cdef mm_error err
    cdef int status
    cdef mm_handle handle
    fd, created = _open_to_create(path, filename)
    owned = False                    # this call holds the reset mark of the file
    try:
        st = _os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        _begin_truncation(key, filename)
        owned = True
        try:
            handle = _os_handle(fd)
            with nogil:
                status = mm_map_handle(handle, access, offset, length, flags | MM_TRUNCATE,
                                       &m.view, &err)
            if status != MM_OK:
                _raise(&err, filename, offset, length)
            if m.view.data != NULL:
                _register(m)
        finally:
            _end_truncation(key)
    except BaseException:
        _os.close(fd)
        fd = -1
        # A file this call created goes again, but only while no other call uses it: one
        # that lost the race for the reset mark leaves the winner's file alone.
        if created and owned and _live_count(st.st_dev, st.st_ino) == 0:
            _remove_created(path, st)
        raise
    finally:
        if fd >= 0:
            _os.close(fd)   # the view holds no descriptor
    return 0


def _open_to_create(bytes path, filename):
    """(fd, created): open ``path`` read-write, creating it if missing (O_EXCL says which)."""
    try:
        return _os.open(path, _O_OPEN | _os.O_CREAT | _os.O_EXCL, 0o666), True
    except FileExistsError:
        pass
    except OSError as exc:
        raise _renamed(exc, filename) from None
    try:
        return _os.open(path, _O_OPEN), False
    except OSError as exc:
        raise _renamed(exc, filename) from None


def _renamed(OSError exc, filename):
    """The same OS error, naming the file as the user gave it (not its encoded bytes)."""
    return OSError(exc.errno, exc.strerror, filename)


def _remove_created(bytes path, st):
    """Remove a file this call created, unless the path names another file by now."""
    try:
        now = _os.stat(path)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            _os.unlink(path)
    except OSError:
        pass


cdef int _drop_view(Region m) except -1:
    cdef mm_error err
    with nogil:
        mm_unmap(&m.view, &err)
    memset(&m.view, 0, sizeof(mm_view))
    return 0


cdef int _register(Region m) except -1:
    _live_add(m.view.file_id[0], m.view.file_id[1], 1)
    m._file_dev = m.view.file_id[0]
    m._file_ino = m.view.file_id[1]
    m._registered = True
    return 0


cdef int _unregister(Region m) except -1:
    if not m._registered:
        return 0
    m._registered = False
    return _count_view_gone(m._file_dev, m._file_ino)


cdef int _count_view_gone(uint64_t dev, uint64_t ino) except -1:
    """One live view of file (dev, ino) fewer in the registry."""
    return _live_add(dev, ino, -1)


cdef bint _register_unless_reset(Region m, unsigned long long started) except -1:
    """Register m's view unless a reset of its file ended after ``started`` or is under way.

    One step: after the key tuple is built (its allocation may collect; only while a reset
    is remembered), nothing below allocates a tracked object, so no finalizer and no other
    thread runs in between."""
    if _truncating or _truncated_at:
        key = (m.view.file_id[0], m.view.file_id[1])
        if key in _truncating or _truncated_at.get(key, 0) > started:
            return False
    _live_add(m.view.file_id[0], m.view.file_id[1], 1)
    m._file_dev = m.view.file_id[0]
    m._file_ino = m.view.file_id[1]
    m._registered = True
    return True


cdef int _begin_truncation(tuple key, name) except -1:
    global _epoch
    n = _live_count(key[0], key[1])
    if n:
        _refuse(REFUSED_MAPPED, n, name)
    if key in _truncating:
        _refuse(REFUSED_RESETTING, 0, name)
    _epoch += 1
    _truncating[key] = True
    _truncated_at[key] = _epoch
    return 0


cdef int _end_truncation(key) except -1:
    # Stamped at the end: every map that began before now may have seen the old size.
    global _epoch
    _epoch += 1
    _truncated_at[key] = _epoch
    _truncating.pop(key, None)
    _prune_truncations()
    return 0


cdef int _prune_truncations() except -1:
    # With no map in flight, no map can have raced a finished reset: forget those. The list
    # may collect (and let other threads run), so the condition is checked again per key.
    if _in_flight == 0 and _truncated_at:
        for key in list(_truncated_at):
            if _in_flight == 0 and key not in _truncating:
                _truncated_at.pop(key, None)
    return 0


def _reset_after_fork():
    """In a forked child: the other threads are gone, with their maps, resets and region
    operations in flight.

    Their marks would refuse the file forever, and the exports their operations held would
    keep closed regions mapped (and registered) forever: both are dropped. The live views the
    child inherited stay counted (their mappings are inherited too)."""
    global _in_flight, _fork_generation
    cdef Region region
    cdef _Retired placeholder
    cdef _Pin pin
    cdef mm_view fresh
    _in_flight = 0
    _fork_generation += 1
    _truncating.clear()
    _truncated_at.clear()
    busy = list(_busy_regions.values())
    _busy_regions.clear()
    for region in busy:
        region._exports -= region._busy
        region._busy = 0
        region._loops = None         # their threads are gone
        if region._exports == 0 and region._closed:
            try:
                region._unmap_now()
            except Exception:
                pass
    # Pins of the loops other threads ran (a chunks() scan): those threads are gone, and
    # their loops with them. The forking thread's own go on in the child, as in the parent.
    me = PyThread_get_thread_ident()
    for pin in list(_live_pins.values()):
        if pin.owner != me:
            try:
                _unpin(pin)      # unmaps a closed region whose last export this was
            except Exception:
                pass
    # Rebases whose commit (a rename) another thread was running without the GIL: that
    # thread is gone. The move is finished if the name leads to the copy by now, else
    # undone (the child keeps the old view). The forking thread's own rebase (a commit that
    # forks) goes on in the child, as in the parent.
    for placeholder, region in list(_rebasing.items()):
        if placeholder.rebaser == me:
            continue
        fresh = placeholder.pending
        if not region._closed and placeholder.pending_name is not None and \
                _names_file(placeholder.pending_name, &fresh):
            region._finish_rebase(&fresh, placeholder)
        else:
            region._undo_rebase(&fresh, placeholder)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_reset_after_fork)


cdef bint _names_file(bytes path, mm_view *view) noexcept:
    """Whether ``path`` leads to the file ``view`` maps now (False on any error)."""
    cdef uint64_t ident[3]
    cdef mm_error err
    if b"\0" in path:
        return False
    if mm_path_identity(path, ident, &err) != MM_OK:
        return False
    return ident[0] == view.file_id[0] and ident[1] == view.file_id[1]


def path_identity(bytes path):
    """(st_dev, st_ino, birth time or 0) of the file ``path`` names now (csrc/mm.h,
    mm_path_identity); raises the C layer's error (FileNotFoundError, ...)."""
    cdef uint64_t ident[3]
    cdef mm_error err
    cdef int status
    if b"\0" in path:
        raise ValueError("embedded null byte")
    cdef const char *c_path = path
    with nogil:
        status = mm_path_identity(c_path, ident, &err)
    if status != MM_OK:
        _raise(&err, _os.fsdecode(path), 0, 0)
    return (ident[0], ident[1], ident[2])


def live_views(st_dev, st_ino):
    """Number of live mapped views of the file with this identity in this process."""
    if not (0 <= st_dev <= 0xFFFFFFFFFFFFFFFF and 0 <= st_ino <= 0xFFFFFFFFFFFFFFFF):
        return 0
    return _live_count(st_dev, st_ino)


def truncate_guarded(target, name, truncate, *args):
    """Call ``truncate(*args)``, which truncates the file ``target`` (an open descriptor, or a
    path), unless this process maps that file (ValueError). A map of the file that races the
    call sees it and maps again. With a descriptor, the identity checked is that of the file
    that will be truncated."""
    try:
        st = _os.fstat(target) if isinstance(target, int) else _os.stat(target)
    except FileNotFoundError:
        return truncate(*args)       # nothing there to be mapped
    key = (st.st_dev, st.st_ino)
    _begin_truncation(key, name)
    try:
        return truncate(*args)
    finally:
        _end_truncation(key)




@cython.auto_pickle(False)
cdef class _Retired:
    """A view a resize replaced, kept mapped while arrays made on it live (Region._resize)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("_Retired objects are made by Mapping.resize, not directly")

    cdef int _unmap(self) except -1:
        cdef mm_view view = self.view
        cdef mm_error err
        if view.data == NULL:
            return 0
        memset(&self.view, 0, sizeof(mm_view))
        _count_view_gone(self.file_dev, self.file_ino)
        with nogil:
            mm_unmap(&view, &err)    # unguards it too
        return 0

    def __dealloc__(self):
        try:
            self._unmap()
        except BaseException:
            PyErr_WriteUnraisable(None)


# -- the fault guard ----------------------------------------------------------------------------

cdef int _guard(Region m) except -1:
    """Guard m's view: a SIGBUS in it becomes a zero page and a fault record (csrc/mm.h)."""
    global _guard_enabled, _guard_installed, _guard_next
    cdef mm_error err
    # Puts the handler back in front if another one was installed since (checked at most
    # every 100 ms: a sigaction(2) call per map would cost more than the rest of the guard).
    if (mm_guard_keep_front(&err) if _guard_installed else mm_guard_install(&err)) != MM_OK:
        _guard_enabled = False       # no guard here (Windows) or it cannot be installed
        return 0
    if not _guard_installed:
        _guard_installed = True
        if _guard_hook is not None:
            _guard_hook()            # start whatever turns fault records into exceptions
    _guard_next += 1
    # The owner is m itself, borrowed: the slot is removed (_unguard) before m can go.
    if mm_guard_add(&m.view, _guard_next, <void *>m, &err) == MM_OK:
        m._guard_token = _guard_next
    return 0


cdef int _unguard(Region m) noexcept:
    # Before the unmap (mm_unmap also removes the slot): the count stays readable afterwards.
    if m._guard_token == 0:
        return 0
    m._faults_at_unmap += mm_guard_faults(&m.view)   # added up over re-guards (resize)
    mm_guard_remove(&m.view)
    m._guard_token = 0
    return 0


def set_guard(bint enabled):
    """Guard the views mapped from now on (True), or stop: the guard's handler is removed and
    a SIGBUS takes its default course again (False)."""
    global _guard_enabled, _guard_installed
    cdef mm_error err
    _guard_enabled = enabled
    if not enabled and _guard_installed:
        mm_guard_uninstall(&err)
        _guard_installed = False


def guard_enabled():
    """Whether views mapped now are guarded."""
    return _guard_enabled


def set_guard_hook(hook):
    """Call ``hook()`` when the guard is first installed (and again after set_guard(False)
    then True): what starts the reader of :func:`guard_wake_fd`."""
    global _guard_hook
    _guard_hook = hook


def guard_wake_fd():
    """The read end of the guard's wake-up pipe (one byte per fault), or -1 before the guard
    is installed (and on Windows)."""
    return mm_guard_wake_fd()


cdef uint64_t _view_offset(Region region, uint64_t token):
    # The file offset of the first byte of the view guarded with `token`: the Region's
    # current view, or one retired for arrays made before a resize or a rebase.
    cdef _Retired retired
    if token != region._guard_token:
        for retired in region._retired or ():
            if retired.guard_token == token:
                return retired.offset
    return region._offset


def guard_pop():
    """The queued fault records, oldest first: a list of (token, file name, file offset of
    the faulting byte, thread ident, native thread id); the name is None (and the offset the
    view's) for a view unmapped since."""
    cdef mm_fault fault
    cdef void *owner
    cdef Region region
    records = []
    while mm_guard_pop(&fault):
        owner = mm_guard_owner(&fault)   # unguarding takes the GIL we hold
        # A Region being deallocated has a reference count of 0 while its weakref callbacks
        # run (before __dealloc__ unguards it): taking a reference would resurrect it.
        if owner == NULL or Py_REFCNT(<object>owner) == 0:
            records.append((fault.token, None, fault.offset, fault.thread,
                            fault.native_thread))
        else:
            region = <Region>owner
            records.append((fault.token, region._filename,
                            _view_offset(region, fault.token) + fault.offset,
                            fault.thread, fault.native_thread))
    return records


def guard_recorded():
    """How many faults the guard has counted as queued so far (csrc/mm.h, mm_guard_recorded):
    read in a thread, it counts every fault that thread made before."""
    return mm_guard_recorded()


def guard_taken():
    """How many queued faults :func:`guard_pop` has taken or dropped so far (csrc/mm.h,
    mm_guard_taken); below :func:`guard_recorded` while a record is still being written."""
    return mm_guard_taken()


def guard_lost():
    """How many fault records the guard's queue dropped (it overflowed) since the last
    call (csrc/mm.h, mm_guard_take_lost); call it after guard_pop."""
    return mm_guard_take_lost()


def guard_new_pipe():
    """In a forked child: a wake-up pipe of its own (csrc/mm.h, mm_guard_new_pipe)."""
    cdef mm_error err
    if mm_guard_new_pipe(&err) != MM_OK:
        raise OSError(err.code, "cannot make the fault guard's wake-up pipe")


#: raise_in_thread's results.
RAISED = 1
NO_SUCH_THREAD = 0
THREAD_STARTING = -1
NOTHING_TO_RAISE = 2


cdef bint _listed(unsigned long thread, tuple dicts) except -1:
    # Whether one of the dicts holds a true value for `thread`. No Python code runs here and
    # nothing the garbage collector tracks is allocated (an int key, dict lookups, the truth
    # of the values the caller stores: lists and ints), so no other thread takes the GIL
    # between this and what the caller does next.
    cdef object key = thread
    for d in dicts:
        value = (<dict?>d).get(key)
        if value is not None and value:
            return True
    return False


def cancel_and_take(unsigned long thread, tuple dicts not None):
    """If one of ``dicts`` holds a true value for ``thread``: pop ``thread`` from each dict
    and cancel the exception pending in that thread (PyThreadState_SetAsyncExc(thread,
    NULL)). Returns the popped values (None where absent). One step under the GIL: another
    thread's :func:`raise_in_thread` with the same dicts comes wholly before it (and is
    cancelled) or wholly after (and finds nothing)."""
    cdef Py_ssize_t i, n = len(dicts)
    # Allocated first: on CPython 3.11 allocating an object the garbage collector tracks may
    # run a collection, whose finalizers may run Python code or release the GIL. Nothing
    # between the check and the cancel allocates one.
    cdef list taken = [None] * n
    if not _listed(thread, dicts):
        return tuple(taken)
    key = thread
    for i in range(n):
        taken[i] = (<dict>dicts[i]).pop(key, None)
    PyThreadState_SetAsyncExc(thread, NULL)
    return tuple(taken)     # the state is changed: a collection here is harmless


def raise_in_thread(unsigned long thread, exc_type, tuple only_if_listed=None):
    """Raise ``exc_type`` in the Python thread ``thread`` (threading.get_ident()) at its next
    chance, or with None cancel what is pending there (PyThreadState_SetAsyncExc).

    Returns ``RAISED``, ``NO_SUCH_THREAD``, or (``exc_type`` not None) ``THREAD_STARTING``
    without raising: the thread state PyThreadState_SetAsyncExc would take for ``thread``
    runs no Python code. That is a thread being started by ``thread``: before CPython 3.12 a
    new thread's state has the ident of the thread starting it until the new thread runs
    (``_PyThreadState_Prealloc``, Modules/_threadmodule.c), and is listed first, so the
    exception would kill the new thread in its bootstrap instead (``threading.Thread.start``
    and ``_thread.start_new_thread`` alike). The check and the raise are one step under the
    GIL: no thread can be started between them, and a new thread taking its own ident (which
    it does without the GIL) only ends the wait.

    With ``only_if_listed`` (a tuple of dicts), raises only if one of them holds a true value
    for ``thread``, checked in the same step: ``NOTHING_TO_RAISE`` otherwise (see
    :func:`cancel_and_take`)."""
    cdef PyThreadState *state
    cdef PyFrameObject *frame
    if exc_type is not None and not (isinstance(exc_type, type)
                                     and issubclass(exc_type, BaseException)):
        raise TypeError(f"exc_type must be an exception class or None, got {exc_type!r}")
    if only_if_listed is not None and not _listed(thread, only_if_listed):
        return NOTHING_TO_RAISE
    if exc_type is None:
        return RAISED if PyThreadState_SetAsyncExc(thread, NULL) == 1 else NO_SUCH_THREAD
    # The list, newest first, as PyThreadState_SetAsyncExc walks it (Python/pystate.c): it
    # takes the first state with the ident. States are added and removed holding the GIL,
    # or (PyGILState_Ensure) added at the head, which a walk begun before does not see.
    state = PyInterpreterState_ThreadHead(PyInterpreterState_Get())
    while state != NULL and state.thread_id != thread:
        state = PyThreadState_Next(state)
    if state == NULL:
        return NO_SUCH_THREAD
    frame = PyThreadState_GetFrame(state)    # a new reference, or NULL: no Python frame
    if frame == NULL:
        return THREAD_STARTING
    Py_XDECREF(<PyObject *>frame)
    return RAISED if PyThreadState_SetAsyncExc(thread, <PyObject *>exc_type) == 1 \
        else NO_SUCH_THREAD


@cython.auto_pickle(False)
@cython.no_gc_clear  # __dealloc__ needs `mapping`, also when the collector frees a cycle
cdef class _Pin:
    """Pins a mapping's view (see Region._check_movable: no resize, no rebase) from creation
    until :meth:`release` or garbage: for a Python-level loop that must see the same view
    from start to end, such as ``chunks(drop_behind=...)`` releasing the pages it passed.
    Counts as one export meanwhile. A forked child keeps the pins of the thread that forked
    (its loop runs on there and releases them) and drops the other threads' (gone in the
    child, with their loops)."""

    def __cinit__(self, Region mapping not None):
        mapping._refuse_while_resized()
        mapping._acquire()           # ValueError if closed
        mapping._pins += 1
        self.mapping = mapping
        self.owner = PyThread_get_thread_ident()
        _live_pins[id(self)] = self

    def __reduce__(self):
        raise TypeError("cannot pickle or copy a pin (it counts one use of a mapping)")

    def release(self):
        """End the pin (idempotent)."""
        _unpin(self)

    def __dealloc__(self):
        try:
            _unpin(self)
        except BaseException:
            PyErr_WriteUnraisable(None)


cdef int _unpin(_Pin pin) except -1:
    cdef Region mapping = pin.mapping
    if mapping is not None:
        pin.mapping = None
        _live_pins.pop(id(pin), None)
        mapping._pins -= 1
        mapping._release()
    return 0


@cython.auto_pickle(False)
cdef class _PopulateAhead:
    """Populate a byte range of a Mapping from a background thread, a window ahead of a
    consumer. ``run()`` loops in C without the GIL (call it from a thread); the consumer calls
    ``advance(pos)`` as it goes and ``cancel()`` when it stops early."""

    def __cinit__(self, Region mapping not None, uint64_t start, uint64_t end, uint64_t step,
                  uint64_t window):
        if mapping._closed:
            raise ValueError("mapping is closed")
        if step == 0 or window == 0:
            raise ValueError(f"step ({step}) and window ({window}) must be at least 1 byte")
        if start > end or end > mapping.view.length:
            raise ValueError(f"byte range [{start}, {end}) is not inside the mapping's "
                             f"{mapping.view.length} bytes")
        self.mapping = mapping
        self.start = start
        self.end = end
        self.step = step
        self.window = window
        self.consumer = start
        self.stop = 0
        self.progress = start

    def __reduce__(self):
        raise TypeError("cannot pickle or copy a populate-ahead loop")

    def advance(self, uint64_t position):
        self.consumer = position

    def cancel(self):
        self.stop = 1

    @property
    def progress(self):
        """The byte of the mapping below which the loop touches nothing again (``end`` once
        ``run()`` has returned): what lies below it may be released without a fault of the
        loop still in flight mapping it back."""
        return self.progress

    def run(self):
        """Populate until done, cancelled, or the consumer stays idle for 10 s (populating is
        a head start only); raises the C layer's error, ValueError if closed."""
        cdef mm_error err
        cdef int status
        generation = self.mapping._acquire_busy()  # the region stays mapped while it runs
        try:
            if self.mapping._loops is None:
                self.mapping._loops = set()
            self.mapping._loops.add(self)   # close() stops it from here on
            if self.end > self.mapping.view.length:
                raise BufferError(f"the mapping was resized to {self.mapping.view.length} "
                                  f"bytes (by another thread) since this populating loop "
                                  f"was set up for bytes {self.start} to {self.end}: start "
                                  f"it again")
            with nogil:
                status = mm_populate_ahead(&self.mapping.view, self.start, self.end, self.step,
                                           self.window, &self.consumer, &self.stop,
                                           &self.progress, _POPULATE_IDLE_LIMIT_US, &err)
            if status != MM_OK:
                # Reported as bytes of the file (the loop's range is relative to the view).
                _raise(&err, self.mapping._filename, self.mapping._offset + self.start,
                       self.end - self.start)
        finally:
            if self.mapping._loops is not None:
                self.mapping._loops.discard(self)
            self.mapping._release_busy(generation)


cdef int _stop_loops(Region region) except -1:
    # Region.close(): the populating loops running on the region stop at their next step
    # (they read `stop` without the GIL; a stale read costs one more step).
    cdef _PopulateAhead loop
    for loop in region._loops:
        loop.stop = 1
    return 0
