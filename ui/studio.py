"""The whole studio: five tabs in the order a newcomer uses them."""

from __future__ import annotations

import gradio as gr

from . import api, chat_tab, data_tab, monitor_tab, runs_tab, train_tab
from .context import Studio

CSS = """
.ft-cards {display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px;}
.ft-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 4px 14px; opacity: .7;}
.ft-card-chosen {border: 2px solid var(--color-accent); opacity: 1; box-shadow: 0 2px 8px rgba(0,0,0,.08);}
.ft-card p {margin: 6px 0; font-size: .92em;}
.ft-example pre {white-space: pre-wrap; font-size: .85em; padding: 10px; border-radius: 8px;
                 background: var(--background-fill-secondary);}
.ft-example-title {font-weight: 600; margin-top: 8px;}
.ft-trained {background: rgba(46, 160, 67, .22); border-radius: 3px;}
.ft-prompt {color: var(--body-text-color-subdued);}
.ft-legend {font-size: .85em;}
.ft-status {font-size: 1.05em; margin-bottom: 6px;}
.ft-progress {height: 14px; background: var(--background-fill-secondary); border-radius: 7px; overflow: hidden;}
.ft-progress-bar {height: 100%; background: var(--color-accent); transition: width .5s;}
.ft-progress-bar.ft-hot {background: #d9534f;}
.ft-progress-text, .ft-gauge-label {font-size: .9em; margin: 4px 0 10px;}
.ft-error {color: #b42318; margin-top: 6px; white-space: pre-wrap;}
.ft-mode {font-weight: 600; margin-bottom: 6px;}
"""
THEME = gr.themes.Soft(primary_hue="indigo")


def build_studio(studio: Studio) -> gr.Blocks:
    with gr.Blocks(title="Fine-Tune Studio") as demo:
        gr.Markdown("# 🦙 Fine-Tune Studio\nTeach a small language model something new — "
                    "**1** pick data · **2** train · **3** watch it learn · **4** chat with it · **5** keep it.")
        model = train_tab.model_dropdown()
        with gr.Tabs():
            with gr.Tab("1 · Data", id="data"):
                data = data_tab.build(studio, model)
            with gr.Tab("2 · Train", id="train"):
                train = train_tab.build(studio, data, model)
            with gr.Tab("3 · Monitor", id="monitor") as monitor_tab_ui:
                monitor_choice, monitor_refresh = monitor_tab.build(studio, train.current_run)
            with gr.Tab("4 · Chat", id="chat") as chat_tab_ui:
                chat_choice, chat_refresh = chat_tab.build(studio)
            with gr.Tab("5 · Runs", id="runs") as runs_tab_ui:
                runs_on_open = runs_tab.build(studio, data, model)
        api.register(studio)  # the scripting API (gradio_client): ui/api.py
        # lists are refreshed when their tab is opened, so new runs show up without a click
        monitor_tab_ui.select(monitor_refresh, None, monitor_choice, api_visibility="private")
        chat_tab_ui.select(chat_refresh, None, chat_choice, api_visibility="private")
        for fn, inputs, outputs in runs_on_open:
            runs_tab_ui.select(fn, inputs, outputs, api_visibility="private")
        # the memory forecast is drawn as soon as the page opens, before any setting is touched
        forecast_fn, forecast_inputs, forecast_outputs = train.update_forecast
        demo.load(forecast_fn, forecast_inputs, forecast_outputs, api_visibility="private", show_progress="hidden")
    return demo
