"""Fixtures shared by the website's tests and the real-browser test."""
import pytest


@pytest.fixture(scope="session")
def website():
    """The course's website, built as `make html` builds it (chapters executed once per change, cached in
    _build/executed/; under the test suite speed claims are strict, as under nbval)."""
    from course_lib import website as site

    return site.build()
