"""Features: frozen-backbone features extracted once and cached; layer activations."""
