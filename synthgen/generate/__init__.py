"""The jobs that make whole synthetic cases: `job` (text/label map -> CT, latent diffusion) and
`phantom` (the procedural torso phantom). The CLI and the recipe runner call them."""
