# Run from the repository root with a copy of mit-han-lab/once-for-all in
# runs/once-for-all. Builds tests/data/tutorial_predictor.pth: the reference tutorial's
# predictor layout (Linear·ReLU·Linear·ReLU·Linear·ReLU·Linear) with small
# hidden layers, and the predictions of the reference's own code
# (ofa/tutorial/accuracy_predictor.py, spec2feats) for a few architectures.
import json, random, sys
sys.path.insert(0, "runs/once-for-all")
import torch, torch.nn as nn
import importlib.util
# The file alone: the tutorial package's __init__ imports its notebook helpers.
spec = importlib.util.spec_from_file_location("accuracy_predictor", "runs/once-for-all/ofa/tutorial/accuracy_predictor.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
AccuracyPredictor = mod.AccuracyPredictor
torch.manual_seed(0)
h = 6
model = nn.Sequential(nn.Linear(128, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
with torch.no_grad():
    for p in model.parameters():
        p.uniform_(-0.5, 0.5)
torch.save(model.state_dict(), "tests/data/tutorial_predictor.pth")
p = AccuracyPredictor(pretrained=False, device="cpu")
p.model = model
rng = random.Random(1)
archs = []
for r in [128, 160, 172, 224]:
    ks = [rng.choice([3, 5, 7]) for _ in range(20)]
    e = [rng.choice([3, 4, 6]) for _ in range(20)]
    d = [rng.choice([2, 3, 4]) for _ in range(5)]
    archs.append({"ks": ks, "e": e, "d": d, "r": r})
pred = p.predict_accuracy([{**a, "r": [a["r"]]} for a in archs]).view(-1).tolist()
json.dump({"archs": archs, "predicted": pred,
           "made_by": "ofa/tutorial/accuracy_predictor.py AccuracyPredictor.predict_accuracy, torch " + torch.__version__},
          open("tests/data/tutorial_predictor.json", "w"), indent=1)
print(pred)

# The ofa/nas/accuracy_predictor form: AccuracyPredictor(MobileNetArchEncoder)
# with small hidden layers and a base accuracy, and its own predictions.
from ofa.nas.accuracy_predictor.acc_predictor import AccuracyPredictor as NasPredictor
from ofa.nas.accuracy_predictor.arch_encoder import MobileNetArchEncoder
enc = MobileNetArchEncoder(image_size_list=list(range(128, 225, 4)), ks_list=[3, 5, 7],
                           expand_list=[3, 4, 6], depth_list=[2, 3, 4], n_stage=5)
nas = NasPredictor(enc, hidden_size=h, n_layers=3, device="cpu")
with torch.no_grad():
    for p_ in nas.layers.parameters():
        p_.uniform_(-0.5, 0.5)
    nas.base_acc.fill_(0.7)
torch.save(nas.state_dict(), "tests/data/nas_predictor.pth")
with torch.no_grad():
    pred = nas.predict_acc([{"ks": a["ks"], "e": a["e"], "d": a["d"], "image_size": a["r"]} for a in archs]).view(-1).tolist()
json.dump({"archs": archs, "predicted": pred,
           "made_by": "ofa/nas/accuracy_predictor AccuracyPredictor.predict_acc, torch " + torch.__version__},
          open("tests/data/nas_predictor.json", "w"), indent=1)
print(pred)
