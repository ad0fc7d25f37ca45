"""How user messages get generated: the simulator's generation engine (`generation`), the
simulation stage (`simulate`), `dial chat` (`chat`) and the OpenAI-compatible server that exposes
a local model (`serve`). The chatbots the simulator talks to are `dial.chatbots`."""
