"""`report --html`: a campaign's page, built from `model` values by `page`, charts by `svg`."""
