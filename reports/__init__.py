"""Turning results into reports: a results folder is read into one model (`reports.model.ResultSet`),
and small renderers turn the model into output: the HTML page (`reports.html`), its figures
(`reports.plots`), the capability matrix (`reports.capability`), the version comparison
(`reports.compare`) and the CSV and text forms. `python -m reports RESULTS_DIR` renders a page.
"""
