// ES module entry of lbmkv: the same objects as require('lbmkv').
import lbmkv from './index.js'

export const { Node, Table, version } = lbmkv
export default lbmkv
