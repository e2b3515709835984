"""Everything above the data layer: what bundle configs reference, inference, batch scoring, outputs, the portal
and MONAI Label glue, one subpackage each (map and import rules: ``docs/architecture.md``).

Inside ``pipelines`` imports go one way: outputs < kinds < inference < tasks < scoring < pacs < portal / monailabel / demo;
every subpackage may import ``cadpipe.transforms`` and ``cadpipe.data``.
"""
