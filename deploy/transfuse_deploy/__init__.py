"""Operators and helpers shared by the MONAI Deploy applications under ``deploy/apps`` (one copy, imported by every
application; each application folder links to this package so that ``monai-deploy package`` copies it along).

Modules:
    cli: the shared command line, and the checks and output plan that run before the SDK starts a graph.
    inputs: DICOM files found as PACS and CDs export them, decoded once up front; output-folder rules; skip of
        finished outputs (no MONAI Deploy imports).
    series: DICOM series selection by rules, orientation and tie-break, with the log (no MONAI Deploy imports).
    bundle: what the applications read from the exported bundle (``model.ts`` with embedded configs).
    volumes: array and geometry helpers without MONAI Deploy imports (also used by the tests in the main env).
    seg: DICOM SEG (highdicom) with coded anatomy for the bundles' classes.
    operators: the MONAI Deploy operators (loaders, T2 + ADC stacking, writers).
"""
