"""The Gradio studio. Each tab is one module that builds its widgets and wires its events;
`ui.studio.build_studio` puts them together. The UI turns widgets into a RunConfig
(`ui.form`), hands it to the engine's worker, and reads back only what the engine writes
in the run directories."""
