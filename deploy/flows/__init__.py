"""The commands: each runs the pipeline's stages in order for one thing a user asks (deploy, convert,
compile, bench, and the precision choice inside a deploy). Stages never import a command."""
