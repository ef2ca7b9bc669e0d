"""Running a model and measuring how far its outputs are from a reference's.

The bottom of the toolkit's run-time side, beside `graph_io`: every stage that runs a model
(export parity, the fusion self-check, calibration's sensitivity search, `build`'s ORT check,
the parity report) uses these and nothing above them.

- `base`: the runner template (activate / infer / deactivate; feeds checked against the
  backend's input metadata; timing around the backend call only; `cpu_threads`);
- `ort`: the ONNX Runtime runners and `run_onnx`;
- `torch_runner`: the PyTorch runner (torch is imported when a runner is made);
- `compare`: output differences (`Residual`, `OutputDiff`, `compare_outputs`,
  `worst_relative`) and the task metrics shared by the report and calibration (`psnr`,
  `top1_agreement`).

The TensorRT runner stays in `sase_deploy.engines.tensorrt`: it depends on the TensorRT flavour
selection (`engines/flavours.py`), which belongs to the engine layer.
"""
