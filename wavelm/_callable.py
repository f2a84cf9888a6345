"""`wavelm.generate` and `wavelm.score` are both modules and the functions in them: importing
the module (as `from wavelm.score import score` does) makes the package attribute the module,
so the module is made callable and `wavelm.score(model, audio)` works either way."""
import sys
import types


def make_module_callable(module_name: str, fn) -> None:
    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    _CallableModule.__doc__ = f"Calling this module calls {fn.__name__}()."
    sys.modules[module_name].__class__ = _CallableModule
