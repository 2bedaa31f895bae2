//! Weights that move both ways: the network's parameters and buffers under
//! exactly the PyTorch reference's state-dict names, read from and written
//! to safetensors (`Net(spec).load_state_dict(...)` takes them unchanged).

use super::net::Net;
use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensors;
use crate::scalar::Scalar;
use crate::tensor::Tensor;

impl<T: Scalar> Net<T> {
    /// Write every parameter and buffer (running mean/var, and
    /// `num_batches_tracked` as an I64 scalar) under its state-dict name.
    pub fn save_state(&mut self, st: &mut SafeTensors) -> Result<()> {
        for p in self.params_mut() {
            st.insert(
                p.name.clone(),
                &Tensor::from_vec(&p.shape, p.value.clone())?,
            );
        }
        for bn in self.bn_layers_mut() {
            let c = bn.c;
            for b in bn.buffers() {
                st.insert(b.name.clone(), &Tensor::from_vec(&[c], b.value.clone())?);
            }
            st.insert_i64(
                format!("{}.num_batches_tracked", bn.prefix),
                &[],
                &[bn.num_batches_tracked],
            )?;
        }
        Ok(())
    }

    /// The names of every tensor [`save_state`](Self::save_state) writes
    /// (parameters, BN buffers, `num_batches_tracked`): a checkpoint or
    /// weights file is checked against exactly this set.
    pub fn state_names(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self.params_mut().iter().map(|p| p.name.clone()).collect();
        for bn in self.bn_layers_mut() {
            names.extend(bn.buffers().map(|b| b.name.clone()));
            names.push(format!("{}.num_batches_tracked", bn.prefix));
        }
        names
    }

    /// Write `grad.<name>` for every parameter.
    pub fn save_grads(&mut self, st: &mut SafeTensors) -> Result<()> {
        for p in self.params_mut() {
            st.insert(
                format!("grad.{}", p.name),
                &Tensor::from_vec(&p.shape, p.grad.clone())?,
            );
        }
        Ok(())
    }

    /// Load every parameter and buffer by name. Each must be present with
    /// exactly the expected shape and hold only finite values; other tensors
    /// in the file are ignored (a reference fixture holds inputs and
    /// gradients beside the weights). `num_batches_tracked` is optional.
    pub fn load_state(&mut self, st: &SafeTensors) -> Result<()> {
        fn fetch<T: Scalar>(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<T>> {
            if !st.contains(name) {
                return Err(Error::Weights(format!(
                    "{}: missing tensor {name:?} (expected shape {shape:?})",
                    st.origin_str()
                )));
            }
            let t: Tensor<T> = st.get(name)?;
            if t.shape() != shape {
                return Err(Error::Weights(format!(
                    "{}: tensor {name:?} has shape {:?}, the model needs {shape:?}",
                    st.origin_str(),
                    t.shape()
                )));
            }
            if let Some(i) = t.data().iter().position(|v| !v.is_finite()) {
                return Err(Error::Weights(format!(
                    "{}: tensor {name:?} holds a non-finite value at flat index {i}",
                    st.origin_str()
                )));
            }
            Ok(t.into_data())
        }
        for p in self.params_mut() {
            p.value = fetch(st, &p.name, &p.shape)?;
        }
        for bn in self.bn_layers_mut() {
            let c = bn.c;
            for b in bn.buffers_mut() {
                b.value = fetch(st, &b.name, &[c])?;
            }
            let key = format!("{}.num_batches_tracked", bn.prefix);
            if st.contains(&key) {
                let (_, v) = st.get_i64(&key)?;
                bn.num_batches_tracked = *v.first().ok_or_else(|| {
                    Error::Weights(format!("{}: {key:?} is empty", st.origin_str()))
                })?;
            }
        }
        Ok(())
    }
}
