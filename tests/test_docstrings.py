"""The `>>>` examples of hatnet_keras' docstrings run as doctests on the current backend.

Each docstring with examples is one test, run in a fresh namespace (the examples
import what they use) and in a temporary working directory. Illustrative
examples (datasets, checkpoints, downloads, plotting, training) are written as
```python blocks instead, which doctest does not collect.
"""

import doctest
import importlib
import pkgutil

import keras
import pytest

import hatnet_keras

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    prefix = f"{hatnet_keras.__name__}."
    return [hatnet_keras.__name__] + [
        info.name for info in pkgutil.walk_packages(hatnet_keras.__path__, prefix=prefix)
    ]


def _docstring_tests():
    finder = doctest.DocTestFinder()
    tests = []
    for name in _module_names():
        module = importlib.import_module(name)
        # globs={}: an example sees none of its module's names, only what it imports.
        tests.extend(test for test in finder.find(module, name, globs={}) if test.examples)
    return tests


DOCSTRING_TESTS = _docstring_tests()


def test_docstring_examples_are_found():
    assert len(DOCSTRING_TESTS) > 50
    names = {test.name for test in DOCSTRING_TESTS}
    assert {"hatnet_keras.model.HATNet", "hatnet_keras.layers.eager"} <= names


def test_no_docstring_example_is_skipped():
    # An example that cannot run here is a ```python block, not a skipped doctest.
    skipped = [
        f"{test.name}: {example.source.strip()}"
        for test in DOCSTRING_TESTS
        for example in test.examples
        if example.options.get(doctest.SKIP)
    ]
    assert not skipped, "\n".join(skipped)


@pytest.mark.parametrize("test", DOCSTRING_TESTS, ids=lambda test: test.name)
def test_docstring_examples(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands in a temporary folder
    policy = keras.config.dtype_policy()
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    try:
        result = runner.run(test, out=report.append)
    finally:
        keras.config.set_dtype_policy(policy)  # in case an example failed before restoring it
    where = test.filename if test.lineno is None else f"{test.filename}:{test.lineno + 1}"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples of {test.name} ({where}) failed:\n"
        + "".join(report)
    )
