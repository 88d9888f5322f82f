"""Test-fixture implementation of a vendor-style Centrifuge feature (`Centrifuge.sila.xml`, not
Labwright's) on the Python `sila2` server; replaces the generated
`feature_implementations/centrifuge_impl.py`. Every call is appended as one JSON line to
$LW_STATION_LOG. A spin reports progress over about 1 s; an unbalanced load raises Imbalance.
"""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from sila2.server import MetadataDict, ObservableCommandInstance

from ..generated.centrifuge import CentrifugeBase, Imbalance, Spin_Responses

if TYPE_CHECKING:
    from ..server import Server


class CentrifugeImpl(CentrifugeBase):
    def __init__(self, parent_server: Server) -> None:
        super().__init__(parent_server=parent_server)
        self.Spin_default_lifetime_of_execution = timedelta(minutes=30)

    def Spin(
        self,
        Force: float,
        DurationMinutes: float,
        Balanced: bool,
        *,
        metadata: MetadataDict,
        instance: ObservableCommandInstance,
    ) -> Spin_Responses:
        instance.begin_execution()
        with open(os.environ["LW_STATION_LOG"], "a") as f:
            f.write(json.dumps({"command": "Spin", "Force": Force, "DurationMinutes": DurationMinutes, "Balanced": Balanced}) + "\n")
        if not Balanced:
            raise Imbalance("the operator did not confirm the balance")
        for i in range(10):
            instance.progress = i / 10
            time.sleep(0.1)
        return Spin_Responses(AchievedForce=Force)
