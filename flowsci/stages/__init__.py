"""Stage functions: one per `flowsci <stage>` command, with the same options."""
