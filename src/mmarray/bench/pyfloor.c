/*
 * pyfloor.c -- the Python floor for the open/close benchmark: the least any Python API over
 * the C floor's five system calls pays for `m = open(path); a = m.array; m.close(); del a`
 * with the guarantees users expect of an mmap-backed array (a read-only array whose region
 * stays mapped until both the object is closed and the array is gone). It does the calls as
 * floor.c does, with the GIL released around them as any library must (open(2) can block on
 * a network or FUSE file system, munmap(2) of a FUSE mapping can wait for its server); it
 * keeps nothing else: no registry of live views, no SIGBUS guard, no modes, no dtypes, no
 * file name, no error types. Compiled by the harness into its temporary directory against
 * the running Python's and numpy's headers and imported from there; information only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    void *base;      /* the mapping, NULL once unmapped */
    size_t length;   /* its length */
    Py_ssize_t exports;
    int closed;
} Region;

typedef struct {
    PyObject_HEAD
    Region *region;  /* one export of it, held for as long as the array lives */
} Export;

static PyTypeObject RegionType, ExportType;

static void region_unmap(Region *self) {
    void *base = self->base;
    size_t length = self->length;
    self->base = NULL;
    if (base == NULL)
        return;
    Py_BEGIN_ALLOW_THREADS
    munmap(base, length);
    Py_END_ALLOW_THREADS
}

static void region_dealloc(Region *self) {
    region_unmap(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *region_close(Region *self, PyObject *unused) {
    self->closed = 1;
    if (self->exports == 0)
        region_unmap(self);
    Py_RETURN_NONE;
}

static void export_dealloc(Export *self) {
    Region *region = self->region;
    if (--region->exports == 0 && region->closed)
        region_unmap(region);
    Py_DECREF(region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *region_array(Region *self, void *closure) {
    npy_intp dims[1];
    Export *export;
    PyObject *array;
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    export = PyObject_New(Export, &ExportType);
    if (export == NULL)
        return NULL;
    Py_INCREF(self);
    export->region = self;
    self->exports++;
    dims[0] = (npy_intp)self->length;
    /* data is the mapping's first byte and the array spans exactly its length */
    array = PyArray_NewFromDescr(&PyArray_Type, PyArray_DescrFromType(NPY_UINT8), 1, dims, NULL,
                                 self->base, 0, NULL);
    if (array == NULL || PyArray_SetBaseObject((PyArrayObject *)array, (PyObject *)export) < 0) {
        Py_XDECREF(array);
        Py_DECREF(export);
        return NULL;
    }
    return array;
}

static PyObject *floor_open(PyObject *module, PyObject *path_obj) {
    const char *path = PyUnicode_AsUTF8(path_obj);
    Region *region;
    void *base = MAP_FAILED;
    size_t length = 0;
    int err = 0;
    if (path == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    {
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            err = errno;
        else {
            if (fstat(fd, &st) != 0)
                err = errno;
            else {
                length = (size_t)st.st_size;
                base = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
                if (base == MAP_FAILED)
                    err = errno;
            }
            close(fd);
        }
    }
    Py_END_ALLOW_THREADS
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    }
    region = PyObject_New(Region, &RegionType);
    if (region == NULL) {
        munmap(base, length);
        return NULL;
    }
    region->base = base;
    region->length = length;
    region->exports = 0;
    region->closed = 0;
    return (PyObject *)region;
}

static PyMethodDef region_methods[] = {
    {"close", (PyCFunction)region_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef region_getset[] = {
    {"array", (getter)region_array, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef module_methods[] = {
    {"open", floor_open, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "pyfloor", NULL, -1,
                                        module_methods};

PyMODINIT_FUNC PyInit_pyfloor(void) {
    import_array();
    RegionType.tp_name = "pyfloor.Region";
    RegionType.tp_basicsize = sizeof(Region);
    RegionType.tp_flags = Py_TPFLAGS_DEFAULT;
    RegionType.tp_dealloc = (destructor)region_dealloc;
    RegionType.tp_methods = region_methods;
    RegionType.tp_getset = region_getset;
    ExportType.tp_name = "pyfloor.Export";
    ExportType.tp_basicsize = sizeof(Export);
    ExportType.tp_flags = Py_TPFLAGS_DEFAULT;
    ExportType.tp_dealloc = (destructor)export_dealloc;
    if (PyType_Ready(&RegionType) < 0 || PyType_Ready(&ExportType) < 0)
        return NULL;
    return PyModule_Create(&module_def);
}
