/* The deployed probe's optimizer hooks in C (see trajlib/_native/__init__.py and
 * trajlib/deploy/_probe.py).
 *
 * A CPython extension: torch calls these hooks like any Python hook, and the usual step (no
 * closure, CPU float32 parameters where the probe's pointer table says, every gradient present,
 * float32 and contiguous) runs without the interpreter: the checks, the gradients' addresses and
 * the kernels of layer_sums.c. Anything else calls the probe's Python hook (``_pre_py`` /
 * ``_post_py``), which handles every case. The probe object stays the one source of truth: the
 * hooks read and write its attributes, and nothing here outlives a call except interned names.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "layer_sums.c"

/* must match trajlib/deploy/_probe.py: steps whose outputs share one allocation */
#define OUT_CHUNK 64

static PyObject *s_fast, *s_param_groups, *s_params, *s_data_ptr, *s_grad, *s_dtype,
    *s_is_contiguous, *s_has_prev, *s_armed, *s_nat_next, *s_nat_views, *s_nat_base, *s_nat_out,
    *s_missing, *s_pending, *s_steps_seen, *s_dots, *s_native_out, *s_pre_py, *s_post_py,
    *s_errors, *s_group_lists;

/* the fast path's tuple (``StepProbe._fast``), see _probe.py */
enum { F_PARAMS, F_L, F_N, F_W, F_G, F_GBUF, F_WBUF, F_UBUF, F_F32, F_LEN };

static void *addr_of(PyObject *fast, int i) { return PyLong_AsVoidPtr(PyTuple_GET_ITEM(fast, i)); }

/* the probe's Python hook: what the fast path hands over */
static PyObject *python_hook(PyObject *probe, PyObject *name, PyObject *const *args,
                             Py_ssize_t nargs) {
    PyObject *fn = PyObject_GetAttr(probe, name);
    if (!fn) return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, nargs, NULL);
    Py_DECREF(fn);
    return r;
}

/* an address from ``t.data_ptr()``; 0 with an error set */
static intptr_t data_ptr(PyObject *t) {
    PyObject *r = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (!r) return 0;
    void *p = PyLong_AsVoidPtr(r);
    Py_DECREF(r);
    return (intptr_t)p;
}

/* 1: the optimizer's param groups are the ones the pointer tables were built for (the probe's
 * ``_group_lists``: (params list, its length) per group; the probe empties it to force a
 * rebuild) */
static int same_layout(PyObject *probe, PyObject *opt) {
    PyObject *groups_then = PyObject_GetAttr(probe, s_group_lists);
    if (!groups_then) return -1;
    PyObject *groups = PyObject_GetAttr(opt, s_param_groups);
    if (!groups) {
        Py_DECREF(groups_then);
        return -1;
    }
    int ok = PyList_Check(groups) && PyList_Check(groups_then) &&
             PyList_GET_SIZE(groups) == PyList_GET_SIZE(groups_then);
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(groups); i++) {
        PyObject *g = PyList_GET_ITEM(groups, i);
        PyObject *then = PyList_GET_ITEM(groups_then, i);
        PyObject *params = PyDict_Check(g) ? PyDict_GetItemWithError(g, s_params) : NULL;
        if (!params) {
            ok = PyErr_Occurred() ? -1 : 0;
            break;
        }
        ok = PyTuple_Check(then) && PyTuple_GET_SIZE(then) == 2 &&
             params == PyTuple_GET_ITEM(then, 0) && PyList_Check(params) &&
             PyList_GET_SIZE(params) == PyLong_AsSsize_t(PyTuple_GET_ITEM(then, 1));
    }
    Py_DECREF(groups);
    Py_DECREF(groups_then);
    if (ok == 1 && PyErr_Occurred()) ok = -1;
    return ok;
}

/* 1: every parameter where the table says and every gradient readable (addresses into g);
 * 0: hand over to Python; -1: an error is set */
static int read_pointers(PyObject *fast) {
    PyObject *params = PyTuple_GET_ITEM(fast, F_PARAMS), *f32 = PyTuple_GET_ITEM(fast, F_F32);
    Py_ssize_t L = PyTuple_GET_SIZE(params);
    int64_t *w = (int64_t *)addr_of(fast, F_W), *g = (int64_t *)addr_of(fast, F_G);
    if (PyErr_Occurred()) return -1;
    for (Py_ssize_t i = 0; i < L; i++) {
        PyObject *p = PyTuple_GET_ITEM(params, i);
        intptr_t pw = data_ptr(p);
        if (!pw) return PyErr_Occurred() ? -1 : 0;
        if ((int64_t)pw != w[i]) return 0; /* moved: Python checks and updates the table */
        /* the gradient stays alive through the kernel: the parameter holds it, and no Python
         * code runs until the kernel has read it */
        PyObject *gr = PyObject_GetAttr(p, s_grad);
        if (!gr) return -1;
        int ok = gr != Py_None;
        if (ok) {
            PyObject *dt = PyObject_GetAttr(gr, s_dtype);
            ok = dt == f32;
            Py_XDECREF(dt);
            if (!dt) ok = -1;
        }
        if (ok == 1) {
            PyObject *c = PyObject_CallMethodNoArgs(gr, s_is_contiguous);
            ok = c ? c == Py_True : -1;
            Py_XDECREF(c);
        }
        if (ok == 1) {
            intptr_t pg = data_ptr(gr);
            ok = pg ? 1 : (PyErr_Occurred() ? -1 : 0);
            g[i] = (int64_t)pg;
        }
        Py_DECREF(gr);
        if (ok != 1) return ok;
    }
    return 1;
}

/* the step's output row: (view, address), as StepProbe._native_out gives it */
static PyObject *next_out(PyObject *probe, Py_ssize_t L) {
    PyObject *o = PyObject_GetAttr(probe, s_nat_next);
    if (!o) return NULL;
    Py_ssize_t i = PyLong_AsSsize_t(o);
    Py_DECREF(o);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i >= OUT_CHUNK) { /* a new chunk, from Python */
        PyObject *r = PyObject_CallMethodNoArgs(probe, s_native_out);
        if (r && !(PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2)) {
            Py_DECREF(r);
            PyErr_SetString(PyExc_TypeError, "trajlib probe: _native_out() is not (view, address)");
            return NULL;
        }
        return r;
    }
    PyObject *views = PyObject_GetAttr(probe, s_nat_views);
    PyObject *base = PyObject_GetAttr(probe, s_nat_base);
    PyObject *out = NULL;
    if (views && base && PyTuple_Check(views) && i >= 0 && i < PyTuple_GET_SIZE(views)) {
        void *b = PyLong_AsVoidPtr(base);
        PyObject *a = PyErr_Occurred() ? NULL : PyLong_FromVoidPtr((char *)b + 20 * L * i);
        PyObject *nx = PyLong_FromSsize_t(i + 1);
        if (a && nx) out = PyTuple_Pack(2, PyTuple_GET_ITEM(views, i), a);
        if (out && (PyObject_SetAttr(probe, s_nat_out, out) || PyObject_SetAttr(probe, s_nat_next, nx)))
            Py_CLEAR(out);
        Py_XDECREF(a);
        Py_XDECREF(nx);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_RuntimeError, "trajlib probe: output chunk out of step");
    }
    Py_XDECREF(views);
    Py_XDECREF(base);
    return out;
}

static int truth(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* pre_hook(probe, optimizer, args, kwargs) */
static PyObject *pre_hook(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pre_hook(probe, optimizer, args, kwargs)");
        return NULL;
    }
    PyObject *probe = args[0], *opt = args[1], *a = args[2], *kw = args[3];
    PyObject *fast = NULL, *out = NULL;
    int ok = PyTuple_Check(a) && PyTuple_GET_SIZE(a) == 1 && PyDict_Check(kw) &&
             PyDict_GET_SIZE(kw) == 0;
    if (ok) {
        fast = PyObject_GetAttr(probe, s_fast);
        ok = fast && PyTuple_Check(fast) && PyTuple_GET_SIZE(fast) == F_LEN;
    }
    if (ok) ok = same_layout(probe, opt);
    if (ok == 1) ok = read_pointers(fast);
    if (ok == 1) {
        int has_prev = truth(probe, s_has_prev);
        Py_ssize_t L = PyLong_AsSsize_t(PyTuple_GET_ITEM(fast, F_L));
        out = has_prev < 0 || PyErr_Occurred() ? NULL : next_out(probe, L);
        if (out) {
            void *dst = PyLong_AsVoidPtr(PyTuple_GET_ITEM(out, 1));
            const int64_t *n = addr_of(fast, F_N);
            const float *const *w = addr_of(fast, F_W), *const *g = addr_of(fast, F_G);
            float *const *gbuf = addr_of(fast, F_GBUF), *const *wbuf = addr_of(fast, F_WBUF);
            /* a list left by a step that lacked some gradient: emptied for this one */
            int missing = PyErr_Occurred() ? -1 : truth(probe, s_missing);
            PyObject *none_missing = missing == 1 ? PyList_New(0) : NULL;
            if (missing == 0 || (none_missing && !PyObject_SetAttr(probe, s_missing, none_missing))) {
                tl_pre(L, n, w, g, wbuf, gbuf, has_prev, dst);
                /* the kernel ran (it keeps g): never again for this step. If arming fails, the
                 * step goes unmeasured (the post hook sees it unarmed). */
                PyObject_SetAttr(probe, s_armed, Py_True);
                PyErr_Clear();
                Py_XDECREF(none_missing);
                Py_DECREF(out);
                Py_DECREF(fast);
                Py_RETURN_NONE;
            }
            Py_XDECREF(none_missing);
            Py_DECREF(out);
        }
        ok = -1;
    }
    Py_XDECREF(fast);
    PyErr_Clear(); /* the Python hook decides (it counts real errors) */
    return python_hook(probe, s_pre_py, args + 1, 3);
}

/* post_hook(probe, optimizer, args, kwargs) */
static PyObject *post_hook(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "post_hook(probe, optimizer, args, kwargs)");
        return NULL;
    }
    PyObject *probe = args[0];
    int armed = truth(probe, s_armed);
    if (armed == 0) Py_RETURN_NONE;
    PyObject *fast = armed < 0 ? NULL : PyObject_GetAttr(probe, s_fast);
    PyObject *out = NULL;
    int done = 0;
    if (fast && PyTuple_Check(fast) && PyTuple_GET_SIZE(fast) == F_LEN) {
        out = PyObject_GetAttr(probe, s_nat_out);
        if (out && PyTuple_Check(out) && PyTuple_GET_SIZE(out) == 2) {
            int has_prev = truth(probe, s_has_prev);
            int missing = truth(probe, s_missing);
            PyObject *dots = PyObject_GetAttr(probe, s_dots);
            Py_ssize_t L = PyLong_AsSsize_t(PyTuple_GET_ITEM(fast, F_L));
            void *dst = PyLong_AsVoidPtr(PyTuple_GET_ITEM(out, 1));
            const int64_t *n = addr_of(fast, F_N);
            const float *const *w = addr_of(fast, F_W), *const *wbuf = addr_of(fast, F_WBUF);
            float *const *ubuf = addr_of(fast, F_UBUF);
            PyObject *pending = NULL, *seen = NULL, *seen1 = NULL;
            if (dots && has_prev >= 0 && missing == 0 && !PyErr_Occurred()) {
                pending = PyTuple_Pack(2, PyTuple_GET_ITEM(out, 0), Py_None);
                seen = PyObject_GetAttr(probe, s_steps_seen);
                PyObject *one = PyLong_FromLong(1);
                seen1 = seen && one ? PyNumber_Add(seen, one) : NULL;
                Py_XDECREF(one);
            }
            if (seen1 && pending) {
                /* all that can fail is done: the kernel, then the state as _finish leaves it */
                tl_update(L, n, w, wbuf, ubuf, has_prev, dst);
                done = !PyObject_SetAttr(probe, s_armed, Py_False) &&
                       !PyObject_SetAttr(probe, s_nat_out, Py_None) &&
                       !PyObject_SetAttr(probe, s_has_prev, dots) &&
                       !PyObject_SetAttr(probe, s_pending, pending) &&
                       !PyObject_SetAttr(probe, s_steps_seen, seen1);
                if (!done) { /* as the Python hook does on an error: count it, rebuild */
                    PyErr_Clear();
                    PyObject *lst = PyList_New(0), *e = PyObject_GetAttr(probe, s_errors);
                    PyObject *one = PyLong_FromLong(1);
                    PyObject *e1 = e && one ? PyNumber_Add(e, one) : NULL;
                    if (e1) PyObject_SetAttr(probe, s_errors, e1);
                    if (lst) PyObject_SetAttr(probe, s_group_lists, lst);
                    Py_XDECREF(lst);
                    Py_XDECREF(e);
                    Py_XDECREF(one);
                    Py_XDECREF(e1);
                    PyErr_Clear();
                    done = 1;
                }
            }
            Py_XDECREF(dots);
            Py_XDECREF(pending);
            Py_XDECREF(seen);
            Py_XDECREF(seen1);
        }
    }
    Py_XDECREF(out);
    Py_XDECREF(fast);
    if (done) Py_RETURN_NONE;
    PyErr_Clear();
    return python_hook(probe, s_post_py, args + 1, 3);
}

static PyMethodDef methods[] = {
    {"pre_hook", (PyCFunction)(void (*)(void))pre_hook, METH_FASTCALL,
     "pre_hook(probe, optimizer, args, kwargs): StepProbe's optimizer pre-hook."},
    {"post_hook", (PyCFunction)(void (*)(void))post_hook, METH_FASTCALL,
     "post_hook(probe, optimizer, args, kwargs): StepProbe's optimizer post-hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_trajlib_hooks", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__trajlib_hooks(void) {
#define INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return NULL
    INTERN(s_fast, "_fast");
    INTERN(s_param_groups, "param_groups");
    INTERN(s_params, "params");
    INTERN(s_data_ptr, "data_ptr");
    INTERN(s_grad, "grad");
    INTERN(s_dtype, "dtype");
    INTERN(s_is_contiguous, "is_contiguous");
    INTERN(s_has_prev, "_has_prev");
    INTERN(s_armed, "_armed");
    INTERN(s_nat_next, "_nat_next");
    INTERN(s_nat_views, "_nat_views");
    INTERN(s_nat_base, "_nat_base");
    INTERN(s_nat_out, "_nat_out");
    INTERN(s_missing, "_missing");
    INTERN(s_pending, "_pending");
    INTERN(s_steps_seen, "steps_seen");
    INTERN(s_dots, "dots");
    INTERN(s_native_out, "_native_out");
    INTERN(s_pre_py, "_pre_py");
    INTERN(s_post_py, "_post_py");
    INTERN(s_errors, "errors");
    INTERN(s_group_lists, "_group_lists");
#undef INTERN
    return PyModule_Create(&module);
}
