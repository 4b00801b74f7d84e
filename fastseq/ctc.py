"""CTC as plain functions: loss and gradient, best-path and prefix beam
decoding (blank = class 0; see :mod:`fastseq.network.ctc`)."""

from .network.ctc import (BLANK, CTCWarning, ctc_beam_decode, ctc_greedy_decode, ctc_loss,
                          required_length)

__all__ = ["BLANK", "CTCWarning", "ctc_loss", "ctc_greedy_decode", "ctc_beam_decode",
           "required_length"]
