"""Sphinx configuration of the course's website. Built by `make html` (course_lib/website.py), which
stages this folder with the executed chapters and the generated pages in _build/source/."""

project = "Compress & Explain"
author = "the Compress & Explain authors"
copyright = "2026, the Compress & Explain authors (MIT licence)"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The notebooks arrive executed (and cached) from course_lib.website: Sphinx only renders them.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# Chapter cells hold the raw HTML of hints (<details>) and of widget stills.
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_title = "Compress & Explain"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
html_show_sourcelink = False

# MathJax 3 from the site itself (course_lib.website copies its files into _static/mathjax): no CDN, so the
# pages typeset their formulas offline. myst-nb's own MathJax settings apply.
mathjax_path = "mathjax/tex-chtml.js"
