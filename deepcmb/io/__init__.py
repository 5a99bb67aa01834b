"""Every file format of deepcmb, each with its reader and writer in one module.

================================  ==========================  ==========================================
module                            file                        written by
================================  ==========================  ==========================================
:mod:`deepcmb.io.sims`            simulation file (HDF5)      ``deepcmb simulate``
:mod:`deepcmb.io.observations`    observation file (HDF5)     code outside deepcmb (your own maps)
:mod:`deepcmb.io.reconstruction`  reconstruction file (HDF5)  ``deepcmb reconstruct`` (qe and nn)
:mod:`deepcmb.io.report`          ``report.h5``,              ``deepcmb evaluate``
                                  ``summary.json``
:mod:`deepcmb.io.chains`          ``chains.h5``,              ``deepcmb params``
                                  ``summary.json``
================================  ==========================  ==========================================

:mod:`deepcmb.fields` is the table of the maps these files hold (units, description, how each
transforms under rotations and reflections, observed or truth); :mod:`deepcmb.io.files` holds what
every output shares (atomic writes, output checks, write errors, JSON); :mod:`deepcmb.io.lock` the lock
file ``OUT.lock`` that keeps a second command off an output being written;
:func:`deepcmb.io.maps.open_maps` opens a simulation or an observation file behind one interface, for
the stages that take either.
"""
