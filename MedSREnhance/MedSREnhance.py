"""MedSREnhance: deep-learning super-resolution and denoising of CT/MR volumes in 3D Slicer.

Thin module: the panel binds widgets to a parameter node; all computation lives in MedSREnhanceLib (the engine)
and MedSREnhanceLib.mrml (volume nodes <-> engine). Nothing heavy happens at import or in setup(): torch is
loaded on the first Enhance that needs it, after the user agreed to install it through the PyTorch extension.
"""
import importlib.util
import logging
import os
import sys
import traceback
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text


def _ensureLibraryImportable() -> None:
    """Packaged extensions ship MedSREnhanceLib next to this file; a source checkout has it one level up."""
    if importlib.util.find_spec("MedSREnhanceLib") is not None:
        return
    repoRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(repoRoot, "MedSREnhanceLib")):
        sys.path.insert(0, repoRoot)


_ensureLibraryImportable()

CONSOLE_EXAMPLE = """logic = slicer.util.getModuleLogic("MedSREnhance")
volume = slicer.util.getNode("MRHead")
enhancedNode, differenceNode = logic.process(volume, task="sr", model="auto", scale=2, device="auto")"""


#
# MedSREnhance
#


class MedSREnhance(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSR Enhance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []  # PyTorchUtils is needed only by learned models, checked on Enhance
        self.parent.contributors = ["MedSREnhance developers"]
        self.parent.helpText = _(
            "Super-resolution and denoising of CT and MR volumes with bundled deep-learning models "
            "(and classical baselines for comparison).<br>"
            "<b>Usage:</b> pick the input volume, the task (super-resolution or denoising), a model (auto picks "
            "the best bundled one) and, for super-resolution, the scale: isotropic x2/x3/x4, per axis, or "
            "through-plane (refines the slice axis; 'Suggest from spacing' proposes the factor). Click "
            "<b>Enhance</b>; it runs in a separate process (Slicer stays responsive and a crash cannot take it down) with "
            "progress, an ETA and Cancel; the <i>Log</i> section shows what the engine reported. "
            "The result <i>&lt;input&gt;_SRx2</i> (or <i>_denoised</i>) keeps the input's physical extent, "
            "orientation, parent transform and window/level; <i>&lt;input&gt;_difference</i> is the enhanced "
            "volume minus the input resampled to the output grid, shown in blue-red around 0.<br>"
            "<b>Python console:</b><pre>" + CONSOLE_EXAMPLE + "</pre>"
            "See the extension's docs/slicer.md for details and the self-test."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer's scripted module template, SimpleITK and PyTorch (installed through the "
            "SlicerPyTorch extension). Models and measurements are described in each bundled model card."
        )


#
# MedSREnhanceParameterNode
#


@parameterNodeWrapper
class MedSREnhanceParameterNode:
    """Panel state, saved with the scene. model and device are filled at run time (registry, detected GPUs), so
    they are plain strings synchronised by the widget rather than Choice-bound combo boxes."""

    inputVolume: vtkMRMLScalarVolumeNode
    task: Annotated[str, Choice(["sr", "denoise", "motion"])] = "sr"
    model: str = "auto"
    scaleMode: Annotated[str, Choice(["isotropic", "per-axis", "through-plane"])] = "isotropic"
    isotropicFactor: Annotated[int, Choice([2, 3, 4])] = 2
    scaleI: Annotated[float, WithinRange(1.0, 8.0)] = 1.0
    scaleJ: Annotated[float, WithinRange(1.0, 8.0)] = 1.0
    scaleK: Annotated[float, WithinRange(1.0, 8.0)] = 2.0
    throughPlaneAxis: Annotated[str, Choice(["auto", "i", "j", "k"])] = "auto"
    throughPlaneFactor: Annotated[float, WithinRange(1.0, 8.0)] = 2.0
    device: str = "auto"
    tileSize: Annotated[int, WithinRange(0, 1024)] = 0
    precision: Annotated[str, Choice(["auto", "fp32", "fp16", "bf16"])] = "auto"
    adapt: bool = False
    adaptSeconds: Annotated[int, WithinRange(10, 3600)] = 180
    showLayout: bool = True
    differenceAsOverlay: bool = False
    uncertainty: bool = False
    uncertaintyAsOverlay: bool = False
    enhancedVolume: vtkMRMLScalarVolumeNode
    differenceVolume: vtkMRMLScalarVolumeNode


#
# MedSREnhanceWidget
#


class MedSREnhanceWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._modelListTask = None  # task the model combo was filled for
        self._runInput = None  # input of the running job
        self._lastInputID = None  # to suggest a through-plane factor when the input changes

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSREnhance.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSREnhanceLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.enhanceButton.connect("clicked(bool)", self.onEnhanceButton)
        self.ui.suggestScaleButton.connect("clicked(bool)", self.onSuggestScale)
        self.ui.detectDevicesButton.connect("clicked(bool)", self.onDetectDevices)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.progressBar.hide()

        self._fillDeviceComboBox(self.logic.deviceChoices(loadTorch=False))
        if "torch" in sys.modules:  # already loaded by another module: showing its versions costs nothing
            self.ui.deviceInfoLabel.text = self.logic.torchInfo()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._abortJob()  # module cleanup: no engine process may outlive the panel
        self.removeObservers()

    def _abortJob(self) -> None:
        """Kill a running job at once (no completion callback): its result would have nowhere to go."""
        if self._job is not None:
            self._job.abort()
            self._job = None
            self._setRunning(False)
            self.ui.statusLabel.text = _("Stopped. The scene is unchanged.")

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._abortJob()  # its result would land in a closed scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedSREnhanceParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._relabelChoiceComboBoxes()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._fillModelComboBox()
            if not self._selectComboData(self.ui.deviceComboBox, self._parameterNode.device):
                # e.g. "cuda:1" saved in a scene before torch was loaded in this session: keep it selectable
                self.ui.deviceComboBox.addItem(self._parameterNode.device, self._parameterNode.device)
                self._selectComboData(self.ui.deviceComboBox, self._parameterNode.device)
        self._onParameterNodeModified()

    # -- GUI state ------------------------------------------------------------------------------------------------

    def _relabelChoiceComboBoxes(self) -> None:
        """connectGui fills Choice combos with raw values; show readable labels (values are read by index)."""
        from MedSREnhanceLib.mrml import panel as helpers

        for index, task in enumerate(helpers.TASKS):
            self.ui.taskComboBox.setItemText(index, helpers.TASK_LABELS[task])

    def _fillModelComboBox(self) -> None:
        from MedSREnhanceLib.mrml import panel as helpers

        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in helpers.model_choices(self._parameterNode.task):
            combo.addItem(choice.label, choice.name)
            combo.setItemData(combo.count - 1, choice.summary, qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        self._modelListTask = self._parameterNode.task
        if not self._selectComboData(combo, self._parameterNode.model):
            combo.setCurrentIndex(0)
            self._parameterNode.model = "auto"
        self._updateModelDescription()

    def _fillDeviceComboBox(self, choices) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        current = combo.itemData(combo.currentIndex) if combo.count else "auto"
        combo.clear()
        for value, label in choices:
            combo.addItem(label, value)
        combo.blockSignals(wasBlocked)
        self._selectComboData(combo, current)

    @staticmethod
    def _selectComboData(combo, value) -> bool:
        index = combo.findData(value)
        if index < 0:
            return False
        combo.setCurrentIndex(index)
        return True

    def _updateModelDescription(self) -> None:
        self.ui.modelDescriptionLabel.text = self.ui.modelComboBox.itemData(
            self.ui.modelComboBox.currentIndex, qt.Qt.ToolTipRole) or ""

    def onModelChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)
        self._updateModelDescription()

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p and p.task != self._modelListTask:
            self._fillModelComboBox()  # the task changed: offer that task's models
        inputID = p.inputVolume.GetID() if p and p.inputVolume else None
        if inputID != self._lastInputID:
            self._lastInputID = inputID
            if inputID and p.scaleMode == "through-plane":
                self.onSuggestScale()  # a new input: its own slice axis and factor
        isSR = bool(p) and p.task == "sr"
        self.ui.scaleCollapsibleButton.enabled = isSR
        mode = p.scaleMode if p else "isotropic"
        self.ui.isotropicFrame.visible = mode == "isotropic"
        self.ui.perAxisFrame.visible = mode == "per-axis"
        self.ui.throughPlaneFrame.visible = mode == "through-plane"
        self.ui.scaleSummaryLabel.text = self._scaleSummary() if isSR else _("Denoising keeps the input grid.")
        if self._job is None:
            self.ui.enhanceButton.enabled = bool(p and p.inputVolume)
            self.ui.enhanceButton.toolTip = (_("Run the enhancement in the background. Click again to cancel.")
                                             if p and p.inputVolume else _("Select an input volume."))

    def _currentScale(self):
        from MedSREnhanceLib.mrml import panel as helpers

        p = self._parameterNode
        spacing = p.inputVolume.GetSpacing() if p.inputVolume else None
        return helpers.scale_from_choice(
            p.scaleMode, isotropic_factor=p.isotropicFactor, per_axis=(p.scaleI, p.scaleJ, p.scaleK),
            axis=p.throughPlaneAxis, through_plane_factor=p.throughPlaneFactor, spacing=spacing)

    def _scaleSummary(self) -> str:
        p = self._parameterNode
        if not p or not p.inputVolume:
            return ""
        try:
            scale = self._currentScale()
        except ValueError as exc:
            return str(exc)
        spacing = p.inputVolume.GetSpacing()
        dims = p.inputVolume.GetImageData().GetDimensions() if p.inputVolume.GetImageData() else (0, 0, 0)
        newSpacing = ", ".join(f"{s / f:.3g}" for s, f in zip(spacing, scale))
        newDims = " x ".join(str(int(round(n * f))) for n, f in zip(dims, scale))
        return _("Output: {dims} voxels, spacing {spacing} mm (i, j, k)").format(dims=newDims, spacing=newSpacing)

    def onSuggestScale(self) -> None:
        from MedSREnhanceLib.mrml import panel as helpers

        p = self._parameterNode
        if not p or not p.inputVolume:
            return
        axis, factor = helpers.suggest_through_plane(p.inputVolume.GetSpacing())
        with slicer.util.NodeModify(p.parameterNode):
            p.scaleMode = "through-plane"
            p.throughPlaneAxis = helpers.AXES[axis]
            p.throughPlaneFactor = max(1.0, factor)
        if factor <= 1.0:
            self.ui.statusLabel.text = _("The input is already nearly isotropic: through-plane SR adds little.")

    def onDetectDevices(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load PyTorch."), waitCursor=True):
            if not self.logic.ensureDependencies("sr", "auto", forceTorch=True):
                return
            self._fillDeviceComboBox(self.logic.deviceChoices(loadTorch=True))
            self.ui.deviceInfoLabel.text = self.logic.torchInfo()

    # -- running ----------------------------------------------------------------------------------------------------

    def onEnhanceButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.enhanceButton.enabled = False
            self.ui.enhanceButton.text = _("Cancelling...")
            self.ui.statusLabel.text = _("Cancelling: stopping the engine process; the scene stays as it was.")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the enhancement."), waitCursor=True):
            if not self.logic.ensureDependencies(p.task, p.model):
                self.ui.statusLabel.text = _("Not started: required Python packages are missing.")
                return
            if "torch" in sys.modules:
                self.ui.deviceInfoLabel.text = self.logic.torchInfo()
            scale = self._currentScale() if p.task == "sr" else 1
            self._runInput = p.inputVolume
            self.ui.logTextEdit.clear()
            self._job = self.logic.processAsync(
                p.inputVolume, task=p.task, model=p.model, scale=scale, device=p.device,
                tile=p.tileSize or None, precision=p.precision, adapt=p.adaptSeconds if p.adapt else 0,
                uncertainty=p.uncertainty,
                enhancedVolumeNode=p.enhancedVolume, differenceVolumeNode=p.differenceVolume,
                progressCallback=self._onProgress, completedCallback=self._onCompleted, logCallback=self._onLog)
            self._setRunning(True)

    def _setRunning(self, running: bool) -> None:
        self.ui.enhanceButton.text = _("Cancel") if running else _("Enhance")
        self.ui.enhanceButton.enabled = True
        for widget in (self.ui.inputsCollapsibleButton, self.ui.scaleCollapsibleButton,
                       self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        if running:
            self.ui.progressBar.setRange(0, 0)  # busy until the first tile reports
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
        else:
            self.ui.progressBar.hide()

    def _onProgress(self, progress) -> None:
        from MedSREnhanceLib.mrml import panel as helpers

        if progress.total:
            self.ui.progressBar.setRange(0, progress.total)
            self.ui.progressBar.setValue(progress.done)
        else:
            self.ui.progressBar.setRange(0, 0)  # busy: starting or loading the model, no units counted yet
        self.ui.statusLabel.text = helpers.format_progress(progress)

    def _onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _onCompleted(self, outcome) -> None:
        from MedSREnhanceLib.mrml import panel as helpers
        from MedSREnhanceLib import InputError

        self._job = None
        self._setRunning(False)
        self._onParameterNodeModified()
        if outcome.cancelled:
            self.ui.statusLabel.text = _("Cancelled. The scene is unchanged.")
            return
        if outcome.error is not None:
            message = str(outcome.error).splitlines()[0] if str(outcome.error) else type(outcome.error).__name__
            self.ui.statusLabel.text = _("Failed: {message}").format(message=message)
            details = getattr(outcome.error, "details", "") or "".join(  # the child's traceback or stderr
                traceback.format_exception(type(outcome.error), outcome.error, outcome.error.__traceback__))
            extra = {} if isinstance(outcome.error, InputError) else {"detailedText": details}
            slicer.util.errorDisplay(_("Enhancement failed: {message}").format(message=message), **extra)
            return
        # The output selectors stay as they were: with "Create new volume" a re-run updates the nodes named after
        # the input and scale (a x3 run never overwrites the node named _SRx2).
        p = self._parameterNode
        lines = [_("Done in {t} with model {model} on {device}.").format(
            t=helpers.format_duration(outcome.elapsed), model=outcome.model, device=outcome.device)]
        lines += outcome.messages
        self.ui.statusLabel.text = "\n".join(lines)
        if p is None or p.showLayout:
            self.logic.showResults(self._runInput, outcome.enhanced_node, outcome.difference_node,
                                   differenceAsOverlay=bool(p and p.differenceAsOverlay),
                                   uncertaintyVolumeNode=outcome.uncertainty_node,
                                   uncertaintyAsOverlay=bool(p and p.uncertaintyAsOverlay))


#
# MedSREnhanceLogic
#


class MedSREnhanceLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry point (no GUI needed). Wraps MedSREnhanceLib.mrml.EnhanceLogic, adding dependency
    installation, a Qt timer for non-blocking runs and the result layout.

    Console: ``enhancedNode, differenceNode = logic.process(inputVolumeNode, task="sr", scale=2)``.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._activeJobs = {}  # job -> timer: keeps both alive while the engine process runs

    def getParameterNode(self):
        return MedSREnhanceParameterNode(super().getParameterNode())

    @staticmethod
    def _core():
        from MedSREnhanceLib.mrml import EnhanceLogic

        return EnhanceLogic()

    # -- dependencies -------------------------------------------------------------------------------------------

    def ensureDependencies(self, task: str = "sr", model: str = "auto", askConfirmation: bool = True,
                           forceTorch: bool = False) -> bool:
        """torch through the PyTorch extension (only if the model may need it) and pip packages of classical
        methods; asks before installing anything. Returns False when something is still missing."""
        from MedSREnhanceLib.mrml import panel as helpers

        plan = helpers.dependency_plan(task, model)  # prompts only for what this model needs
        if forceTorch and not plan.torch:
            version = helpers.installed_torch_version()
            plan = helpers.DependencyPlan("" if helpers.torch_version_ok(version) else
                                          ("too old" if version else "missing"), version, plan.packages)
        if plan.torch and not self._ensureTorch(askConfirmation, plan):
            return False
        missing = list(plan.packages)
        if not missing:
            return True
        try:
            import slicer.packaging as slicerPackaging  # Slicer >= 5.12
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
            from packaging.requirements import Requirement

            slicerPackaging.pip_ensure([Requirement(r) for r in missing], prompt_install=askConfirmation,
                                 requester="MedSREnhance")
        else:
            if askConfirmation and not slicer.app.commandOptions().testingEnabled and not \
                    slicer.util.confirmOkCancelDisplay(
                        _("MedSREnhance needs these Python packages: {packages}. Install them now?").format(
                            packages=", ".join(missing))):
                return False
            for requirement in missing:
                slicer.util.pip_install(requirement)
        importlib.invalidate_caches()
        return not helpers.missing_packages(missing)

    def _ensureTorch(self, askConfirmation: bool, plan) -> bool:
        """torch through the PyTorch extension when it is missing or older than the minimum (plan.torch)."""
        from MedSREnhanceLib.mrml import panel as helpers

        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("This model needs PyTorch {minimum} or newer (installed: {installed}). Install "
                                 "the 'PyTorch' extension from the Extensions Manager, restart Slicer and try "
                                 "again.").format(minimum=helpers.MINIMUM_TORCH_VERSION,
                                                  installed=plan.torch_version or _("none"))) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=f">={helpers.MINIMUM_TORCH_VERSION}")
        if torch is None:
            return False
        if plan.torch == "too old":  # the old build stays loaded in this session; the engine process is new
            slicer.util.infoDisplay(_("PyTorch was updated. Restart Slicer if the panel still shows the old "
                                      "version."))
        return True

    def deviceChoices(self, loadTorch: bool = False):
        """(value, label) pairs; GPUs are listed only when torch is loaded (importing it costs seconds)."""
        from MedSREnhanceLib.mrml import panel as helpers

        if not loadTorch and "torch" not in sys.modules:
            return helpers.device_choices()
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        mps = getattr(torch.backends, "mps", None)
        return helpers.device_choices(names, mps=bool(mps is not None and mps.is_available()))

    def torchInfo(self) -> str:
        from MedSREnhanceLib.mrml import panel as helpers

        if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
            return _("PyTorch is not installed.")
        import torch

        return helpers.torch_summary(torch)

    # -- processing -----------------------------------------------------------------------------------------------

    def process(self, inputVolumeNode, task: str = "sr", model: str = "auto", scale=2, device: str = "auto",
                tile: Optional[int] = None, precision: str = "auto", modality: str = "auto",
                enhancedVolumeNode=None, differenceVolumeNode=None, progress=None, cancel=None,
                showResult: bool = False, uncertainty: bool = False, showUncertainty: bool = False,
                adapt: float = 0):
        """Blocking. Returns (enhancedNode, differenceNode); with ``uncertainty=True`` (learned models only) also an
        uncertaintyNode (expected absolute error, Inferno), overlaid on the enhanced view if ``showUncertainty``.
        ``scale``: 2, (1, 1, 3) (i, j, k) or "1,1,3"; ignored for task="denoise". ``adapt``: seconds to
        fine-tune the model on this volume first (self-supervised; 0 = off)."""
        if not self.ensureDependencies(task, model):
            raise RuntimeError(_("Required Python packages are missing."))
        nodes = self._core().process(
            inputVolumeNode, task=task, model=model, scale=scale, device=device, tile=tile, precision=precision,
            modality=modality, enhancedVolumeNode=enhancedVolumeNode, differenceVolumeNode=differenceVolumeNode,
            progress=progress, cancel=cancel, uncertainty=uncertainty, showUncertainty=showUncertainty, adapt=adapt)
        if showResult:
            self.showResults(inputVolumeNode, nodes[0], nodes[1])
        return nodes

    def processAsync(self, inputVolumeNode, task: str = "sr", model: str = "auto", scale=2,
                     device: str = "auto", tile: Optional[int] = None, precision: str = "auto",
                     modality: str = "auto", enhancedVolumeNode=None, differenceVolumeNode=None,
                     progressCallback=None, completedCallback=None, logCallback=None, pollIntervalMs: int = 100,
                     adapt: float = 0, uncertainty: bool = False, showUncertainty: bool = False):
        """Non-blocking: starts the engine in a child process and returns its job at once (``job.cancel()``,
        ``job.finished``, ``job.outcome``). ``progressCallback(Progress)``, ``logCallback(str)`` and
        ``completedCallback(JobOutcome)`` run in the main thread; the outcome holds enhanced_node/difference_node,
        or cancelled/error (then the scene is unchanged)."""
        if not self.ensureDependencies(task, model):
            raise RuntimeError(_("Required Python packages are missing."))
        job = self._core().processAsync(
            inputVolumeNode, task=task, model=model, scale=scale, device=device, tile=tile, precision=precision,
            modality=modality, enhancedVolumeNode=enhancedVolumeNode, differenceVolumeNode=differenceVolumeNode,
            progressCallback=progressCallback, completedCallback=completedCallback, logCallback=logCallback,
            adapt=adapt, uncertainty=uncertainty, showUncertainty=showUncertainty)
        timer = qt.QTimer()
        timer.setInterval(pollIntervalMs)

        def poll():
            try:
                finished = job.poll()
            except Exception:  # a failing callback must not leave the timer firing forever
                logging.exception("MedSREnhance: error while finishing the job")
                finished = True
            if finished:
                timer.stop()
                self._activeJobs.pop(job, None)

        timer.connect("timeout()", poll)
        self._activeJobs[job] = timer
        timer.start()
        return job

    # -- display --------------------------------------------------------------------------------------------------

    def showResults(self, inputVolumeNode, enhancedVolumeNode, differenceVolumeNode,
                    differenceAsOverlay: bool = False, uncertaintyVolumeNode=None,
                    uncertaintyAsOverlay: bool = False) -> None:
        """input | enhanced | difference in three linked slice views (or input | enhanced + difference overlay).
        ``uncertaintyAsOverlay``: the uncertainty map is the enhanced view's overlay instead (the difference then
        keeps its own view)."""
        from MedSREnhanceLib.mrml import panel as helpers

        app = getattr(slicer, "app", None)
        layoutManager = app.layoutManager() if app is not None else None
        if layoutManager is None:  # no main window (batch, generic tests, slicer-core)
            return
        overlayUncertainty = bool(uncertaintyAsOverlay and uncertaintyVolumeNode is not None)
        if differenceAsOverlay and not overlayUncertainty:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
            views = [("Red", inputVolumeNode, None), ("Yellow", enhancedVolumeNode, differenceVolumeNode)]
        else:
            layoutNode = layoutManager.layoutLogic().GetLayoutNode()
            xml = helpers.layout_xml()
            if layoutNode.IsLayoutDescription(helpers.LAYOUT_ID):
                layoutNode.SetLayoutDescription(helpers.LAYOUT_ID, xml)
            else:
                layoutNode.AddLayoutDescription(helpers.LAYOUT_ID, xml)
            layoutManager.setLayout(helpers.LAYOUT_ID)
            views = list(zip(helpers.VIEW_NAMES, (inputVolumeNode, enhancedVolumeNode, differenceVolumeNode),
                             (None, uncertaintyVolumeNode if overlayUncertainty else None, None)))
        for viewName, background, foreground in views:
            sliceWidget = layoutManager.sliceWidget(viewName)
            if sliceWidget is None:
                continue
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(background.GetID() if background else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            composite.SetForegroundOpacity(0.5 if foreground else 0.0)
            composite.SetLabelVolumeID(None)
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
            if inputVolumeNode is not None:
                sliceWidget.mrmlSliceNode().RotateToVolumePlane(inputVolumeNode)  # oblique scans: own planes
            sliceWidget.sliceLogic().FitSliceToAll()


#
# MedSREnhanceTest
#


class MedSREnhanceTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer: SampleData MRHead cropped to a small block, enhanced on the CPU; checks the
    output grid, the difference map, cancel and the console API. Run with
    ``Slicer --python-code "slicer.selfTests['MedSREnhance']()"`` (needs the sample download once)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_SuperResolutionGeometry, self.test_DenoiseDifferenceMap, self.test_CancelLeavesScene,
                     self.test_ConsoleApi):
            self.setUp()
            test()

    def _croppedMRHead(self):
        import numpy as np
        import SampleData
        from MedSREnhanceLib import mrml
        from MedSREnhanceLib import Volume

        head = SampleData.downloadSample("MRHead")
        volume = mrml.volume_from_node(head)
        k0, j0, i0 = (s // 2 - n // 2 for s, n in zip(volume.array.shape, (16, 32, 32)))
        block = volume.array[k0:k0 + 16, j0:j0 + 32, i0:i0 + 32]
        origin = volume.index_to_physical(np.array([i0, j0, k0], float))
        cropped = Volume(block, volume.spacing, tuple(origin), volume.direction, {})
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MRHeadCrop")
        mrml.set_node_from_volume(node, cropped)
        node.CreateDefaultDisplayNodes()
        return node

    @staticmethod
    def _smallModel(task: str) -> str:
        """A learned model when one serves MR at this task (x2 for SR) and torch is already installed, else a
        classical one. Never installs torch: build machines run this test without a multi-GB download."""
        from MedSREnhanceLib.engine.enhance import select_model

        spec = select_model(task, "mr", (2.0, 2.0, 2.0) if task == "sr" else (1.0, 1.0, 1.0))
        if spec.kind == "learned" and importlib.util.find_spec("torch") is not None:
            return spec.name
        return "linear" if task == "sr" else "gaussian"

    def test_SuperResolutionGeometry(self):
        import numpy as np
        from MedSREnhanceLib import mrml

        self.delayDisplay("Super-resolution x2 of a cropped MRHead on the CPU")
        inputNode = self._croppedMRHead()
        before = np.array(slicer.util.arrayFromVolume(inputNode), copy=True)
        inputMatrix = mrml.node_ijk_to_ras(inputNode)
        logic = MedSREnhanceLogic()
        enhanced, difference = logic.process(inputNode, task="sr", model=self._smallModel("sr"), scale=2,
                                             device="cpu", showResult=True)
        self.assertEqual(enhanced.GetName(), "MRHeadCrop_SRx2")
        self.assertEqual(difference.GetName(), "MRHeadCrop_difference")
        outMatrix = mrml.node_ijk_to_ras(enhanced)
        # spacing halves, direction kept, outer voxel edges kept (voxel 0 centre moves by -spacing/4)
        np.testing.assert_allclose(outMatrix[:3, :3], inputMatrix[:3, :3] / 2, atol=1e-9)
        np.testing.assert_allclose(outMatrix[:3, 3], inputMatrix[:3, 3] + inputMatrix[:3, :3] @ np.full(3, -0.25),
                                   atol=1e-9)
        self.assertEqual(enhanced.GetImageData().GetDimensions(), (64, 64, 32))
        np.testing.assert_allclose(mrml.node_ijk_to_ras(difference), outMatrix, atol=1e-12)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)
        display = difference.GetDisplayNode()
        self.assertIn("DivergingBlueRed", display.GetColorNodeID() + (display.GetColorNode().GetName() or ""))
        self.assertAlmostEqual(display.GetLevel(), 0.0)
        diff = slicer.util.arrayFromVolume(difference)
        self.assertLess(float(np.abs(diff).mean()), 0.2 * float(np.abs(before).max()))
        self.delayDisplay("Super-resolution geometry passed")

    def test_DenoiseDifferenceMap(self):
        import numpy as np
        from MedSREnhanceLib import mrml

        self.delayDisplay("Denoising keeps the grid; difference = enhanced - input")
        inputNode = self._croppedMRHead()
        enhanced, difference = MedSREnhanceLogic().process(inputNode, task="denoise",
                                                           model=self._smallModel("denoise"), device="cpu")
        self.assertEqual(enhanced.GetName(), "MRHeadCrop_denoised")
        np.testing.assert_allclose(mrml.node_ijk_to_ras(enhanced), mrml.node_ijk_to_ras(inputNode), atol=1e-12)
        np.testing.assert_allclose(
            slicer.util.arrayFromVolume(difference),
            slicer.util.arrayFromVolume(enhanced) - slicer.util.arrayFromVolume(inputNode).astype(np.float32),
            atol=1e-3)

    def test_CancelLeavesScene(self):
        import time

        self.delayDisplay("Cancel leaves the scene as it was")
        inputNode = self._croppedMRHead()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        outcomes = []
        job = MedSREnhanceLogic().processAsync(inputNode, task="sr", model="linear", scale=2, device="cpu",
                                               completedCallback=outcomes.append)
        job.cancel()
        deadline = time.time() + 60
        while not job.finished and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.02)
        self.assertTrue(job.finished)
        self.assertTrue(outcomes and outcomes[0].cancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)

    def test_ConsoleApi(self):
        self.delayDisplay("Console API: getModuleLogic(...).process(...)")
        inputNode = self._croppedMRHead()
        logic = slicer.util.getModuleLogic("MedSREnhance")
        enhancedNode, differenceNode = logic.process(inputNode, task="sr", model="linear", scale=(1, 1, 2),
                                                     device="cpu")
        self.assertEqual(enhancedNode.GetName(), "MRHeadCrop_SRx1x1x2")
        self.assertEqual(enhancedNode.GetImageData().GetDimensions(), (32, 32, 32))
        again, _difference = logic.process(inputNode, task="sr", model="linear", scale=(1, 1, 2), device="cpu")
        self.assertEqual(again.GetID(), enhancedNode.GetID())  # re-runs update their nodes
        self.delayDisplay("Console API passed")
