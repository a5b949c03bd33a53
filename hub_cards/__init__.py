"""memadapter.hub_cards: model-card templates and the code that fills them."""
