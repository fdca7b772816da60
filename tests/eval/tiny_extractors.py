"""Random-weight stand-ins with the call contracts of the FID Inception and the I3D export."""
import torch


class TinyFIDNet(torch.nn.Module):
    """Random-weight stand-in with the Inception call contract: (B,3,H,W) in [0,1] → (B,8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


class TinyI3D(torch.nn.Module):
    """I3D export's call signature; 16 features instead of 400 keep the Fréchet step cheap."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(6, 16)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return self.proj(torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1))
