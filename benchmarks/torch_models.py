"""The jaxcolor networks, losses and train step in PyTorch, for the side-by-side benchmark only.

Layer for layer the same as ``jaxcolor/models`` (same parameter counts, checked by the runner),
the same losses (``jaxcolor/training/losses.py``) and the same update order
(``jaxcolor/training/step.py``):
G forward; one D update on the detached fakes (fake pass, then real pass); one G update against
the updated D, whose weights do not require gradients then (as in the pix2pix reference).
Kernels are stored in PyTorch's own layout; the maths and the multiply counts are identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow/XLA 'SAME' padding (asymmetric for even inputs and stride 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        h = x.shape[-1]
        total = max((-(-h // s) - 1) * s + k - h, 0)
        x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return super().forward(x)


class LabGenerator(nn.Module):
    """jaxcolor.models.lab_gan.LabGenerator."""

    def __init__(self, in_ch: int = 1, out_ch: int = 2, blocks: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, stride in ((in_ch, 32, 1), (32, 64, 2), (64, 128, 2)):
            layers += [SamePadConv(cin, cout, 3, stride, bias=False), _bn(cout), nn.ReLU()]
        for _ in range(blocks):
            layers += [nn.Conv2d(128, 128, 3, 1, 1, bias=False), _bn(128), nn.ReLU()]
        for cin, cout in ((128, 64), (64, 32)):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), _bn(cout), nn.ReLU()]
        layers += [nn.Conv2d(32, out_ch, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DCGANDiscriminator(nn.Module):
    """jaxcolor.models.lab_gan.DCGANDiscriminator."""

    def __init__(self, in_ch: int = 3, features=(64, 128, 256, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_ch
        for i, f in enumerate(features):
            layers.append(nn.Conv2d(cin, f, 4, 2, 1, bias=(i == 0)))
            if i > 0:
                layers.append(_bn(f))
            layers.append(nn.LeakyReLU(0.2))
            cin = f
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 1)

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.net(torch.cat([cond, image], 1))
        return self.fc(x.mean(dim=(2, 3)))


class UNetGenerator(nn.Module):
    """jaxcolor.models.pix2pix.UNetGenerator (the reference UnetGenerator with BatchNorm)."""

    def __init__(self, in_ch: int, out_ch: int, num_downs: int = 8, ngf: int = 64):
        super().__init__()
        n = num_downs
        feats = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (n - 3)
        self.n = n
        self.down = nn.ModuleList()
        self.down_bn = nn.ModuleList()
        cin = in_ch
        for i, f in enumerate(feats):
            self.down.append(nn.Conv2d(cin, f, 4, 2, 1, bias=False))
            self.down_bn.append(_bn(f) if 0 < i < n - 1 else nn.Identity())
            cin = f
        self.up = nn.ModuleList()
        self.up_bn = nn.ModuleList()
        self.drop = nn.ModuleList()
        for i in reversed(range(1, n)):
            up_in = feats[i] if i == n - 1 else 2 * feats[i]
            self.up.append(nn.ConvTranspose2d(up_in, feats[i - 1], 4, 2, 1, bias=False))
            self.up_bn.append(_bn(feats[i - 1]))
            self.drop.append(nn.Dropout(0.5) if 4 <= i < n - 1 else nn.Identity())
        self.last = nn.ConvTranspose2d(2 * feats[0], out_ch, 4, 2, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, (conv, bn) in enumerate(zip(self.down, self.down_bn, strict=True)):
            if i > 0:
                h = F.leaky_relu(h, 0.2)
            h = bn(conv(h))
            skips.append(h)
        h = skips.pop()
        for conv, bn, drop in zip(self.up, self.up_bn, self.drop, strict=True):
            h = drop(bn(conv(F.relu(h))))
            h = torch.cat([skips.pop(), h], 1)
        return torch.tanh(self.last(F.relu(h)))


class PatchGANDiscriminator(nn.Module):
    """jaxcolor.models.pix2pix.PatchGANDiscriminator (70x70 for n_layers=3)."""

    def __init__(self, in_ch: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        cin = ndf
        for n in range(1, n_layers + 1):
            f = min(2**n, 8) * ndf
            layers += [nn.Conv2d(cin, f, 4, 2 if n < n_layers else 1, 1, bias=False), _bn(f),
                       nn.LeakyReLU(0.2)]
            cin = f
        layers.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, image], 1))


def build(generator: str, discriminator: str, cond_ch: int, target_ch: int, num_downs: int):
    """(G, D) named as in jaxcolor's ``model.generator`` / ``model.discriminator``."""
    g = (LabGenerator(cond_ch, target_ch) if generator == "lab_gan"
         else UNetGenerator(cond_ch, target_ch, num_downs))
    d_in = cond_ch + target_ch
    d = DCGANDiscriminator(d_in) if discriminator == "dcgan" else PatchGANDiscriminator(d_in)
    return g, d


def param_count(module: nn.Module) -> int:
    """Number of scalars in a module's parameters."""
    return sum(p.numel() for p in module.parameters())


def label_targets(shape, hard: float, soft: bool, smoothing: float) -> torch.Tensor:
    """jaxcolor.training.losses.label_targets."""
    if soft:
        low = 0.9 if hard == 1.0 else 0.0
        return low + 0.1 * torch.rand(shape)
    return torch.full(shape, 1.0 - smoothing if hard == 1.0 else hard)


class TrainStep:
    """One train step as jaxcolor's: G forward, D update, G update (Adam on both)."""

    def __init__(self, g: nn.Module, d: nn.Module, loss_cfg: dict, lr: float = 2e-4,
                 betas=(0.5, 0.999)):
        self.g, self.d, self.cfg = g, d, loss_cfg
        self.opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas)
        self.adv = (F.binary_cross_entropy_with_logits if loss_cfg["adversarial"] == "bce"
                    else F.mse_loss)
        self.recon = F.l1_loss if loss_cfg["reconstruction"] == "l1" else F.mse_loss

    def __call__(self, cond: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        cfg = self.cfg
        real_hard = 0.0 if cfg["label_flip"] else 1.0
        fake = self.g(cond)
        # D update on detached fakes: fake pass, then real pass (each with its own BN statistics).
        self.opt_d.zero_grad(set_to_none=True)
        fake_out = self.d(cond, fake.detach())
        real_out = self.d(cond, target)
        real_t = label_targets(real_out.shape, real_hard, cfg["soft_labels"], cfg["smoothing"])
        fake_t = label_targets(fake_out.shape, 1.0 - real_hard, cfg["soft_labels"],
                               cfg["smoothing"])
        d_loss = 0.5 * (self.adv(real_out, real_t) + self.adv(fake_out, fake_t))
        d_loss.backward()
        self.opt_d.step()
        # G update against the updated D; D's weights need no gradient here.
        self.d.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        out = self.d(cond, fake)
        g_loss = (cfg["adv_weight"] * self.adv(out, torch.full(out.shape, real_hard))
                  + cfg["recon_weight"] * self.recon(fake, target))
        g_loss.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        return d_loss.detach(), g_loss.detach()
