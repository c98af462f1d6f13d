"""Label vocabularies (vocab/*.yaml and their label lists) as embed-vocab reads them."""
